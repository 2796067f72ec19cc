//! In-kernel tests, run when the command line has `test`: each prints
//! `test NAME ... ok|FAILED (reason)`; the kernel then exits QEMU with the result.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::arch::x86_64::{acpi, interrupts, memory, paging, simd, smp, time};
use crate::line_editor::{edit_distance, Event, LineEditor};
use crate::mem::{frame, FRAME_SIZE};
use crate::parallel::{split_range, CpuPool, Parallel};

static TEST_MODE: AtomicBool = AtomicBool::new(false);

/// Marks the kernel as running tests (exceptions and panics then exit QEMU).
pub fn set_test_mode(on: bool) {
    TEST_MODE.store(on, Ordering::SeqCst);
}

/// True when running tests.
pub fn test_mode() -> bool {
    TEST_MODE.load(Ordering::SeqCst)
}

type TestFn = fn() -> Result<(), String>;

const TESTS: &[(&str, TestFn)] = &[
    ("frame_allocator", test_frames),
    ("heap", test_heap),
    ("paging_permissions", test_paging),
    ("timer", test_timer),
    ("simd", test_simd),
    ("vector_state_across_interrupts", test_vector_state),
    ("smp_sum", test_smp_sum),
    ("line_editor", test_line_editor),
    ("edit_distance", test_edit_distance),
    ("symbols", test_symbols),
    ("cmdline", test_cmdline),
    ("manifest", test_manifest),
    ("settings", test_settings),
    ("latency_stats", test_latency_stats),
    ("prefill_pieces", test_prefill_pieces),
    ("utf8_stream", test_utf8_stream),
    ("counting_allocator", test_counting_allocator),
];

/// Runs every test; true when all passed.
pub fn run_all() -> bool {
    let mut failed = 0;
    for (name, f) in TESTS {
        let start = time::uptime_us();
        match f() {
            Ok(()) => println!(
                "test {name} ... ok ({} ms)",
                (time::uptime_us() - start) / 1000
            ),
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED ({e})");
            }
        }
    }
    println!("ktest: {} passed, {} failed", TESTS.len() - failed, failed);
    failed == 0
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

fn test_frames() -> Result<(), String> {
    let before = frame::free_frames();
    check(before > 0, || "no free frames".into())?;
    let mut got = Vec::new();
    for i in 0..32u8 {
        let f = frame::alloc(1, 1).map_err(|e| format!("alloc {i}: {e}"))?;
        check(f % FRAME_SIZE == 0, || format!("frame {f:#x} not aligned"))?;
        check(f >= 1 << 20, || format!("frame {f:#x} below 1 MiB"))?;
        check(!got.contains(&f), || {
            format!("frame {f:#x} handed out twice")
        })?;
        check(memory::fill_and_check(f, FRAME_SIZE as usize, i), || {
            format!("frame {f:#x} not writable")
        })?;
        got.push(f);
    }
    check(frame::free_frames() == before - 32, || {
        "free count did not drop by 32".into()
    })?;
    let big = frame::alloc(512, 512).map_err(|e| format!("2 MiB aligned run: {e}"))?;
    check(big % (2 << 20) == 0, || {
        format!("run at {big:#x} not 2 MiB aligned")
    })?;
    frame::dealloc(big, 512);
    for f in &got {
        frame::dealloc(*f, 1);
    }
    check(frame::free_frames() == before, || "frames leaked".into())?;
    // Freed frames are reused.
    let again = frame::alloc(1, 1).map_err(|e| format!("{e}"))?;
    frame::dealloc(again, 1);
    check(got.contains(&again), || {
        format!("freed frame not reused (got {again:#x})")
    })?;
    // An over-large request fails instead of corrupting anything.
    check(frame::alloc(u64::MAX / 8192, 1).is_err(), || {
        "huge allocation succeeded".into()
    })
}

fn test_heap() -> Result<(), String> {
    let (used0, _) = memory::heap_usage();
    {
        let v: Vec<u64> = (0..1_000_000u64).collect();
        let sum: u64 = v.iter().sum();
        check(sum == 999_999 * 1_000_000 / 2, || format!("sum {sum}"))?;
        let boxes: Vec<Box<[u8; 100]>> = (0..1000).map(|i| Box::new([i as u8; 100])).collect();
        check(
            boxes.iter().enumerate().all(|(i, b)| b[99] == i as u8),
            || "box contents".into(),
        )?;
        let (used1, _) = memory::heap_usage();
        check(used1 >= used0 + 8_000_000, || {
            format!("heap usage {used1} did not grow")
        })?;
        let big: Vec<u8> = alloc::vec![7u8; 64 << 20];
        check(big.iter().step_by(4096).all(|&b| b == 7), || {
            "64 MiB block".into()
        })?;
    }
    let (used2, _) = memory::heap_usage();
    check(used2 == used0, || {
        format!("heap leaked: {used0} -> {used2}")
    })
}

#[inline(never)]
fn code_target() -> u64 {
    42
}

fn test_paging() -> Result<(), String> {
    let code = code_target as *const () as u64;
    let (p, w, x) = paging::permissions(code);
    check(p && !w && x, || {
        format!("code page perms present={p} writable={w} exec={x}")
    })?;
    let (addr, err) = interrupts::write_expecting_fault(code as *mut u8)
        .ok_or_else(|| String::from("write to kernel code did not fault"))?;
    check(addr == code, || {
        format!("fault address {addr:#x} != {code:#x}")
    })?;
    check(err & 0b11 == 0b11, || {
        format!("error code {err:#x}: want present+write")
    })?;
    check(code_target() == 42, || "code changed".into())?;
    static RODATA: [u8; 8] = *b"readonly";
    let ro = RODATA.as_ptr() as u64;
    let (_, w, x) = paging::permissions(ro);
    check(!w && !x, || format!("rodata writable={w} exec={x}"))?;
    check(
        interrupts::write_expecting_fault(ro as *mut u8).is_some(),
        || "write to rodata did not fault".into(),
    )?;
    let local = 0u64;
    let stack = &local as *const u64 as u64;
    let (_, w, x) = paging::permissions(stack);
    check(w && !x, || format!("stack writable={w} exec={x}"))?;
    check(!paging::permissions(0).0, || "page 0 is mapped".into())?;
    let top = memory::alloc_stack(16 * 1024).map_err(|e| format!("{e}"))?;
    let guard = top - 16 * 1024 - FRAME_SIZE;
    check(!paging::permissions(guard).0, || {
        format!("guard page {guard:#x} mapped")
    })?;
    check(paging::permissions(guard + FRAME_SIZE).1, || {
        "stack page not writable".into()
    })?;
    check(
        interrupts::write_expecting_fault(guard as *mut u8).is_some(),
        || "write to guard page did not fault".into(),
    )
}

fn test_timer() -> Result<(), String> {
    check(time::tsc_khz() > 100_000, || {
        format!("TSC rate {} kHz implausible", time::tsc_khz())
    })?;
    let t0 = interrupts::TIMER_TICKS.load(Ordering::SeqCst);
    let u0 = time::uptime_us();
    while interrupts::TIMER_TICKS.load(Ordering::SeqCst) < t0 + 5 {
        interrupts::enable_and_wait();
        if time::uptime_us() - u0 > 2_000_000 {
            return Err("fewer than 5 timer interrupts in 2 s".into());
        }
    }
    let elapsed = time::uptime_us() - u0;
    // 5 ticks at 100 Hz is ~40-50 ms; allow generous slack for emulation.
    check((20_000..=500_000).contains(&elapsed), || {
        format!("5 ticks took {elapsed} us")
    })?;
    let m0 = time::uptime_ms();
    time::delay_us(20_000);
    let m1 = time::uptime_ms();
    check(m1 >= m0 + 20, || {
        format!("uptime advanced {} ms over a 20 ms delay", m1 - m0)
    })
}

fn test_simd() -> Result<(), String> {
    let data: Vec<u32> = (0..100_003u32)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();
    let scalar: u64 = data.iter().map(|&v| u64::from(v)).sum();
    check(simd::sum_u32(&data) == scalar, || "sum_u32 mismatch".into())?;
    let a: Vec<f32> = (0..1003).map(|i| (i % 17) as f32).collect();
    let b: Vec<f32> = (0..1003).map(|i| (i % 5) as f32).collect();
    let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let got = simd::dot_f32(&a, &b);
    check(got == want, || format!("dot {got} != {want}"))?;
    let cpu_has = raw_cpuid::CpuId::new()
        .get_extended_feature_info()
        .is_some_and(|e| e.has_avx2());
    check(simd::has_avx2() == cpu_has, || {
        format!("AVX2 usable={} but CPUID says {cpu_has}", simd::has_avx2())
    })
}

fn test_vector_state() -> Result<(), String> {
    check(interrupts::vector_state_survives(5), || {
        "xmm/ymm registers changed across interrupts".into()
    })
}

fn test_smp_sum() -> Result<(), String> {
    let listed = acpi::info().cpus().len().max(1);
    let online = smp::online_cpus();
    check(online == listed, || {
        format!("{online} CPUs online, ACPI lists {listed}")
    })?;
    let n = 8 << 20;
    let data: Vec<u32> = (0..n as u32).collect();
    let pool = CpuPool;
    let workers = pool.threads();
    let partial: Vec<AtomicU64> = (0..workers).map(|_| AtomicU64::new(0)).collect();
    let who: Vec<AtomicU64> = (0..workers).map(|_| AtomicU64::new(u64::MAX)).collect();
    let before: Vec<u64> = (0..workers)
        .map(|i| smp::percpu(i).jobs_run.load(Ordering::SeqCst))
        .collect();
    pool.run(&|i| {
        let r = split_range(n, workers, i);
        partial[i].store(simd::sum_u32(&data[r]), Ordering::SeqCst);
        who[i].store(smp::current_cpu() as u64, Ordering::SeqCst);
    });
    let total: u64 = partial.iter().map(|p| p.load(Ordering::SeqCst)).sum();
    let want = (n as u64) * (n as u64 - 1) / 2;
    check(total == want, || format!("parallel sum {total} != {want}"))?;
    for i in 0..workers {
        let w = who[i].load(Ordering::SeqCst);
        check(w == i as u64, || format!("worker {i} ran on cpu {w}"))?;
        check(partial[i].load(Ordering::SeqCst) > 0 || i == 0, || {
            format!("worker {i} summed nothing")
        })?;
        let runs = smp::percpu(i).jobs_run.load(Ordering::SeqCst) - before[i];
        check(runs == 1, || format!("cpu {i} ran {runs} jobs"))?;
    }
    println!(
        "  smp_sum: {workers} CPUs each summed {} of {n} values",
        n / workers
    );
    Ok(())
}

/// Panics on purpose two calls deep, so the backtrace has known frames.
#[inline(never)]
pub fn deliberate_panic() -> ! {
    panic_test_outer(3)
}

#[inline(never)]
fn panic_test_outer(depth: u32) -> ! {
    panic_test_inner(depth + 1)
}

#[inline(never)]
fn panic_test_inner(depth: u32) -> ! {
    panic!("deliberate panic for the panic test (depth {depth})")
}

/// Recurses until the stack runs into its guard page.
#[inline(never)]
pub fn deliberate_overflow(depth: u64) -> u64 {
    let mut frame = [0u8; 4096];
    frame[0] = depth as u8;
    let frame = core::hint::black_box(frame);
    // Stop only at an absurd depth, so the guard page is hit long before.
    if depth > 1 << 40 {
        return depth;
    }
    deliberate_overflow(depth + 1) + u64::from(frame[100])
}

/// Feeds `input` to an editor and returns the events it produced and the echo.
fn edit(ed: &mut LineEditor, input: &[u8]) -> (Vec<Event>, Vec<u8>) {
    let mut echo = Vec::new();
    let mut events = Vec::new();
    for &b in input {
        let e = ed.feed(b, &mut |bytes: &[u8]| echo.extend_from_slice(bytes));
        if e != Event::None {
            events.push(e);
        }
    }
    (events, echo)
}

fn line(s: &str) -> Event {
    Event::Line(String::from(s))
}

fn test_line_editor() -> Result<(), String> {
    const WORDS: &[&str] = &["help", "shutdown", "show", "uptime"];
    let mut ed = LineEditor::new("> ", WORDS);
    // CR, LF and CR LF each end exactly one line.
    let (ev, _) = edit(&mut ed, b"a\rb\nc\r\nd\r");
    check(ev == [line("a"), line("b"), line("c"), line("d")], || {
        format!("enter handling: {ev:?}")
    })?;
    // Backspace, cursor movement and insertion, Delete.
    let (ev, _) = edit(&mut ed, b"helo\x1b[Dl\r");
    check(ev == [line("hello")], || {
        format!("insert after left arrow: {ev:?}")
    })?;
    let (ev, _) = edit(&mut ed, b"abcd\x7f\x7fx\r");
    check(ev == [line("abx")], || format!("backspace: {ev:?}"))?;
    let (ev, _) = edit(&mut ed, b"xyz\x1b[H\x1b[3~\r");
    check(ev == [line("yz")], || format!("home + delete: {ev:?}"))?;
    // History: up recalls older lines, down returns to newer ones.
    let (ev, _) = edit(&mut ed, b"\x1b[A\x1b[A\x1b[B\r");
    check(ev == [line("yz")], || format!("history: {ev:?}"))?;
    // Ctrl-C abandons the line.
    let (ev, echo) = edit(&mut ed, b"oops\x03");
    check(ev == [Event::Cancel] && echo.ends_with(b"^C\r\n"), || {
        format!("ctrl-c: {ev:?}")
    })?;
    // Tab: a unique prefix completes, an ambiguous one extends to the common prefix.
    let mut ed = LineEditor::new("> ", WORDS);
    let (ev, _) = edit(&mut ed, b"up\t\r");
    check(ev == [line("uptime ")], || format!("tab unique: {ev:?}"))?;
    let (ev, _) = edit(&mut ed, b"s\tu\t\r");
    check(ev == [line("shutdown ")], || {
        format!("tab common prefix: {ev:?}")
    })?;
    Ok(())
}

fn test_edit_distance() -> Result<(), String> {
    for (a, b, d) in [
        ("", "abc", 3),
        ("kitten", "sitting", 3),
        ("cpu", "cpu", 0),
        ("shutdwn", "shutdown", 1),
        ("vresion", "version", 2),
    ] {
        let got = edit_distance(a, b);
        check(got == d, || format!("distance({a}, {b}) = {got}, want {d}"))?;
    }
    Ok(())
}

fn test_symbols() -> Result<(), String> {
    let addr = test_symbols as *const () as u64;
    let (name, off) = crate::arch::x86_64::symbols::lookup(addr + 1)
        .ok_or_else(|| String::from("no symbol table (GRUB did not load .symtab?)"))?;
    let name = format!("{name}");
    check(
        name == "embodios_kernel::ktest::test_symbols" && off == 1,
        || format!("lookup gave {name}+{off:#x}"),
    )
}

fn test_cmdline() -> Result<(), String> {
    use crate::cmdline::Options;
    let o = Options::parse("  test nosmp  unknown=1 ");
    check(o.test && o.nosmp && !o.panic_test, || format!("{o:?}"))?;
    check(Options::parse("") == Options::default(), || {
        "empty line".into()
    })?;
    // GRUB quotes a whole argument that has spaces; by hand only the value is quoted.
    for line in [
        r#"quiet "exec=models; load tiny" model=tiny threads=2"#,
        r#"quiet exec="models; load tiny" model=tiny threads=2"#,
    ] {
        let o = Options::parse(line);
        check(
            o.quiet
                && o.exec == Some("models; load tiny")
                && o.model == Some("tiny")
                && o.threads == Some(2),
            || format!("{line}: {o:?}"),
        )?;
    }
    let o = Options::parse("threads=0 model=");
    check(
        o.threads.is_none() && o.bad_threads == Some("0") && o.model.is_none(),
        || format!("{o:?}"),
    )
}

fn test_manifest() -> Result<(), String> {
    use crate::models::{parse_manifest, ManifestError};
    let digest = "ab".repeat(32);
    let text = alloc::format!(
        "# comment\n\ntiny tiny.gguf 123 {digest} default\nbig big.gguf 9 {digest} -\n"
    );
    let list = parse_manifest(&text).map_err(|e| alloc::format!("{e}"))?;
    check(
        list.len() == 2
            && list[0].name == "tiny"
            && list[0].size == 123
            && list[0].default
            && !list[1].default
            && list[1].sha256 == digest,
        || alloc::format!("{list:?}"),
    )?;
    check(
        parse_manifest("a b 1 xyz -") == Err(ManifestError::BadDigest { line: 1 }),
        || "a short digest was accepted".into(),
    )?;
    check(
        parse_manifest(&alloc::format!("a b 1 {digest} maybe"))
            == Err(ManifestError::BadFlag { line: 1 }),
        || "a bad flag was accepted".into(),
    )?;
    check(
        parse_manifest("a b") == Err(ManifestError::MissingFields { line: 1 }),
        || "a short line was accepted".into(),
    )
}

fn test_settings() -> Result<(), String> {
    use crate::infer::{SetError, Settings};
    let mut s = Settings::default();
    s.set("temp", "0.5").map_err(|e| alloc::format!("{e}"))?;
    s.set("top_k", "7").map_err(|e| alloc::format!("{e}"))?;
    check(
        s.get("temp").as_deref() == Some("0.5") && s.get("top_k").as_deref() == Some("7"),
        || alloc::format!("{s:?}"),
    )?;
    check(
        matches!(s.set("bogus", "1"), Err(SetError::UnknownKey(_))),
        || "unknown key accepted".into(),
    )?;
    for (k, v) in [
        ("temp", "-1"),
        ("temp", "nan"),
        ("top_p", "1.5"),
        ("max_tokens", "0"),
        ("threads", "0"),
        ("seed", "x"),
    ] {
        check(
            matches!(s.set(k, v), Err(SetError::BadValue { .. })),
            || alloc::format!("{k} = {v} accepted"),
        )?;
    }
    check(s.get("nope").is_none(), || "get of an unknown key".into())
}

fn test_latency_stats() -> Result<(), String> {
    use crate::infer::{percentile, stddev};
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    check(
        percentile(&v, 0.5) == 50.0 && percentile(&v, 0.99) == 99.0 && percentile(&[], 0.5) == 0.0,
        || "percentiles".into(),
    )?;
    let sd = stddev(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
    check((sd - 2.138).abs() < 1e-3 && stddev(&[1.0]) == 0.0, || {
        alloc::format!("stddev {sd}")
    })
}

fn test_prefill_pieces() -> Result<(), String> {
    use embodios_engine::generate::prefill_pieces;
    // Pieces cover the prompt in order, never straddle a 512-token micro-batch, and keep
    // every token in the rounding class (1, 2-7, 8+ tokens) of its micro-batch.
    for piece in [8, 16, 100] {
        for n in (0..1100)
            .step_by(7)
            .chain([1, 8, 15, 16, 17, 23, 24, 512, 513, 519, 520])
        {
            let mut next = 0;
            for r in prefill_pieces(n, piece) {
                let ub = r.start / 512;
                let ub_len = (n - ub * 512).min(512);
                let ok = r.start == next
                    && !r.is_empty()
                    && (r.end - 1) / 512 == ub
                    && if ub_len < 8 {
                        r.len() == ub_len
                    } else {
                        r.len() >= 8 && r.len() < piece.max(8) + 8
                    };
                check(ok, || {
                    alloc::format!("n {n} piece {piece}: bad piece {r:?}")
                })?;
                next = r.end;
            }
            check(next == n, || {
                alloc::format!("n {n} piece {piece}: ends at {next}")
            })?;
        }
    }
    Ok(())
}

fn test_utf8_stream() -> Result<(), String> {
    // Bytes split anywhere stream as the same text as in one piece; bad bytes become
    // U+FFFD, an unfinished character at the end too.
    let bytes = "héllo wörld \u{1F600}!".as_bytes();
    for split in 0..=bytes.len() {
        let text = crate::infer::stream_utf8(&[&bytes[..split], &bytes[split..]]);
        check(text == "héllo wörld \u{1F600}!", || {
            alloc::format!("split at {split}: {text:?}")
        })?;
    }
    let bad = crate::infer::stream_utf8(&[b"a\xffb", b"\xe2\x82"]);
    check(bad == "a\u{FFFD}b\u{FFFD}", || alloc::format!("{bad:?}"))
}

fn test_counting_allocator() -> Result<(), String> {
    let before = crate::mem::allocations();
    crate::mem::reset_peak();
    let base = crate::mem::peak_bytes();
    let v = core::hint::black_box(alloc::vec![1u8; 100_000]);
    let seen = crate::mem::allocations() - before;
    let peak = crate::mem::peak_bytes() - base;
    drop(v);
    check(seen >= 1 && peak >= 100_000, || {
        alloc::format!("{seen} allocations, peak +{peak} bytes for a 100000-byte vector")
    })
}
