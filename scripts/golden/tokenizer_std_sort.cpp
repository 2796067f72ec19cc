// Records the order GNU libstdc++'s std::sort and std::partial_sort give to inputs
// full of ties, for crates/tokenizer/src/cxxsort.rs to reproduce.
//
//   g++ -O2 -std=c++17 scripts/golden/tokenizer_std_sort.cpp -o /tmp/std_sort &&
//     /tmp/std_sort > crates/tokenizer/tests/golden/std_sort.txt
//
// Each input is n pairs (key, index) with key = lcg() % mod, sorted by key descending
// (the comparator llama.cpp uses for special tokens: longer first). Output lines:
// "<algorithm> <n> <mod> <hash>", hash = FNV-1a 64 over the resulting indices as
// little-endian u32.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <utility>
#include <vector>

static uint64_t state;
static uint64_t lcg() {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return state >> 33;
}

static uint64_t fnv(const std::vector<std::pair<uint64_t, uint32_t>> & v) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const auto & x : v) {
        for (int k = 0; k < 4; k++) {
            h ^= (x.second >> (8 * k)) & 0xFF;
            h *= 0x100000001b3ULL;
        }
    }
    return h;
}

int main() {
    const auto by_key_desc = [](const auto & a, const auto & b) { return a.first > b.first; };
    state = 7;
    for (uint32_t n : {1u, 2u, 5u, 16u, 17u, 33u, 100u, 1000u, 6414u, 20000u}) {
        for (uint64_t mod : {2u, 3u, 7u, 50u}) {
            std::vector<std::pair<uint64_t, uint32_t>> v;
            for (uint32_t i = 0; i < n; i++) v.push_back({lcg() % mod, i});
            std::sort(v.begin(), v.end(), by_key_desc);
            printf("sort %u %llu %016llx\n", n, (unsigned long long) mod, (unsigned long long) fnv(v));
        }
    }
    state = 11;
    for (uint32_t n : {2u, 3u, 17u, 100u, 1001u}) {
        for (uint64_t mod : {2u, 5u}) {
            std::vector<std::pair<uint64_t, uint32_t>> v;
            for (uint32_t i = 0; i < n; i++) v.push_back({lcg() % mod, i});
            std::partial_sort(v.begin(), v.end(), v.end(), by_key_desc);
            printf("heap %u %llu %016llx\n", n, (unsigned long long) mod, (unsigned long long) fnv(v));
        }
    }
}
