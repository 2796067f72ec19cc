//! The shell: reads lines with the line editor (serial and PS/2 keyboard) and runs the
//! built-in commands, including the model commands (`models`, `load`, `generate`,
//! `talk`, ...). Boot options can load a model and run a script of commands first.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::arch::x86_64::{self as cpu, acpi, boot::BootInfo, interrupts, memory, simd, smp, time};
use crate::cmdline::Options;
use crate::drivers::serial;
use crate::infer::{self, Perf, Settings};
use crate::line_editor::{edit_distance, Event, LineEditor};
use crate::models::{human_bytes, human_count, Registry};

/// Prompt printed before every command line.
pub const PROMPT: &str = "embodios> ";

/// Prompt inside `talk`.
pub const TALK_PROMPT: &str = "you> ";

/// Built-in commands: name, usage, one-line description, longer help.
const COMMANDS: &[(&str, &str, &str, &str)] = &[
    ("help", "help [CMD]", "list commands, or explain one", "Without an argument lists every command; `help CMD` explains CMD."),
    ("models", "models", "list the models in the ISO and which are loaded", "Lists every model module: name, architecture, parameters, tensor types (quant mix), memory (weights in place from the boot module, plus KV cache and buffers when loaded) and its state: loaded, active, or why it cannot be used."),
    ("load", "load NAME [--ctx N] | load diskN:/PATH [as NAME]", "load a model (the first one loaded becomes active)", "Parses the model in place from its boot module (no copy of the weights), builds its tokenizer and a KV cache for N positions (default 2048 or the boot option ctx=, capped by the trained context). `load disk0:/models/x.gguf [as NAME]` reads a GGUF file from a FAT disk into memory (SHA-256 checked against x.gguf.sha256 when present) and loads it. Refused with the reason when the module is not a usable GGUF model or does not fit in memory (checked before anything large is allocated)."),
    ("unload", "unload NAME", "unload a model and free its memory", "Frees the model's tokenizer, KV cache and buffers. The module stays in memory, so it can be loaded again."),
    ("switch", "switch NAME", "make a loaded model the active one", "`generate`, `talk` and `bench` use the active model."),
    ("model", "model", "details of the active model", "Architecture, sizes, context, chat template, parameters, tensor types and memory of the active model."),
    ("verify", "verify NAME", "check a model's SHA-256 against the manifest", "Computes the SHA-256 of the module and compares it with the digest `cargo xtask iso` wrote into the manifest."),
    ("generate", "generate PROMPT", "complete the raw text PROMPT (streamed)", "Completes PROMPT without a chat template on a fresh context, streaming tokens as they come, up to `max_tokens`. Ctrl-C stops it."),
    ("talk", "talk", "chat with the active model", "A conversation using the model's chat template. The KV cache is kept between turns, so only new text is evaluated. Inside: /exit leaves, /reset starts over, /perf shows timings, /set KEY VALUE changes a setting. Ctrl-C stops a reply and stays in the conversation."),
    ("set", "set KEY VALUE", "change a setting", "Keys: temp (0 = greedy), top_k (0 disables), top_p, min_p, repeat_penalty (1 disables), seed, max_tokens, threads (cores used)."),
    ("get", "get [KEY]", "show settings", "Shows one setting, or all of them: temp, top_k, top_p, min_p, repeat_penalty, seed, max_tokens, threads."),
    ("perf", "perf", "timings of the last generation and the session", "Prompt tokens, generated tokens, time to first token, prefill and decode tok/s, inter-token latency p50/p99/max and standard deviation, and cores used for the last generation; totals since boot."),
    ("bench", "bench [--json]", "fixed benchmark on the active model", "64 prompt tokens, 128 generated, greedy, on a fresh context. --json prints one JSON line with model, threads, prompt_tokens, gen_tokens, ttft_ms, prefill_tok_s, decode_tok_s, itl_p50_ms, itl_p99_ms, itl_stddev_ms."),
    ("status", "status", "uptime, memory, cores, models, last timings", "One screen: uptime, memory use, cores, loaded models, the active model and the last generation's timings."),
    ("lspci", "lspci [-v]", "list PCI devices", "Every PCI function on every bus: address, class, vendor and device names and IDs. -v adds BARs (kind, address, size), capabilities (MSI, MSI-X, PCIe, ...) and the interrupt pin."),
    ("net", "net", "network interface, address, counters", "The NIC in use (virtio-net, e1000, e1000e), link, MAC, IPv4 address (DHCP or ip=ADDR/PREFIX gw=ADDR on the command line), gateway, frame counters and the HTTP API server's counters (port 80 or port=)."),
    ("ping", "ping ADDR [COUNT]", "ICMP echo to an IPv4 address", "Sends COUNT (default 4) echo requests one second apart and prints each reply's round-trip time."),
    ("disks", "disks", "disks, their partitions and file systems", "Every virtio-blk and NVMe disk: controller, PCI address, model, size, partition table (GPT or MBR) and each partition's file system (FAT16/FAT32 are read)."),
    ("ls", "ls [diskN:]/PATH", "list a directory on a FAT disk", "Lists a directory of the first FAT file system on the disk (default: the first disk that has one): sizes and long file names."),
    ("version", "version", "kernel version and build", "Kernel version, compiler, boot loader, firmware, command line and display."),
    ("mem", "mem", "memory usage", "Usable RAM, free frames, heap use, RAM in use, kernel image and boot modules."),
    ("cpu", "cpu", "cores, CPU features, TSC rate", "Cores online, per-core pool jobs, CPU features, AVX2, TSC rate, APIC mode and interrupt counts."),
    ("uptime", "uptime", "time since boot", "Time since the kernel started."),
    ("clear", "clear", "clear the screen", "Clears the terminal."),
    ("reboot", "reboot", "restart the machine", "Resets through ACPI (or the keyboard controller)."),
    ("shutdown", "shutdown", "power off", "Powers off through ACPI."),
];

const NAMES: &[&str] = &[
    "help", "models", "load", "unload", "switch", "model", "verify", "generate", "talk", "set",
    "get", "perf", "bench", "status", "version", "mem", "cpu", "uptime", "clear", "reboot",
    "shutdown", "lspci", "net", "ping", "disks", "ls",
];

fn out(bytes: &[u8]) {
    crate::console::write_bytes(bytes);
}

/// Everything the commands work on.
pub struct State<'b> {
    /// What the boot loader passed.
    pub boot: &'b BootInfo,
    /// The model modules.
    pub registry: Registry,
    /// `set`/`get` values.
    pub settings: Settings,
    /// Timing figures.
    pub perf: Perf,
}

/// Reads one line with `ed` (input typed during a generation first).
fn read_line(ed: &mut LineEditor, mut reg: Option<&mut Registry>) -> String {
    ed.start(&mut out);
    loop {
        let mut input = infer::take_pending();
        while let Some(b) = serial::read_byte() {
            input.push(b);
        }
        crate::drivers::keyboard::poll(&mut input);
        for (i, &b) in input.iter().enumerate() {
            match ed.feed(b, &mut out) {
                Event::None => {}
                Event::Cancel => ed.start(&mut out),
                Event::Line(line) => {
                    infer::push_pending(&input[i + 1..]);
                    return line;
                }
            }
        }
        // Serve the network between keystrokes (HTTP only where the registry is free).
        match reg.as_deref_mut() {
            Some(r) => crate::httpd::poll(r),
            None => crate::net::poll(),
        }
        interrupts::enable_and_wait();
    }
}

/// Runs the shell forever: boot options first (`threads=`, `model=`, `exec=`), then
/// interactive commands.
pub fn run(boot: &BootInfo, options: &Options) -> ! {
    let mut st = State {
        boot,
        registry: Registry::from_boot(boot),
        settings: Settings::default(),
        perf: Perf::default(),
    };
    if let Some(e) = &st.registry.manifest_error {
        println!("model manifest: {e}");
    }
    for slot in &st.registry.slots {
        match &slot.check {
            Ok(s) if !options.quiet => println!(
                "model module `{}`: {} {} parameters ({})",
                slot.name,
                s.arch,
                human_count(s.params),
                human_bytes(slot.bytes.len() as u64)
            ),
            Ok(_) => {}
            Err(e) => println!("model module `{}` refused: {e}", slot.name),
        }
    }
    if let Some(n) = options.threads {
        if let Err(e) = st.settings.set("threads", &n.to_string()) {
            println!("threads={n}: {e}");
        }
    }
    if let Some(n) = options.context {
        crate::models::set_default_context(n);
    }
    if let Some(v) = options.bad_threads {
        println!("threads={v}: not a positive number; using every core");
    }
    if let Some(name) = options.model {
        let t0 = time::uptime_ms();
        match st
            .registry
            .load(name)
            .and_then(|_| st.registry.switch(name))
        {
            Ok(()) => println!(
                "model `{name}` loaded and active ({} ms)",
                time::uptime_ms() - t0
            ),
            Err(e) => println!("model={name}: {e}"),
        }
    }
    println!(
        "boot took {} ms; type `help` for commands",
        time::uptime_ms()
    );
    if let Some(script) = options.exec {
        for cmd in script.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            println!("{PROMPT}{cmd}");
            execute(cmd, &mut st);
        }
        println!("exec: done");
    }
    let mut ed = LineEditor::new(PROMPT, NAMES);
    loop {
        let line = read_line(&mut ed, Some(&mut st.registry));
        execute(line.trim(), &mut st);
    }
}

/// The argument text after the command word.
fn rest_of(line: &str, cmd: &str) -> String {
    line[cmd.len()..].trim().to_string()
}

/// Runs one command line.
pub fn execute(line: &str, st: &mut State) {
    let boot = st.boot;
    let mut words = line.split_ascii_whitespace();
    let Some(cmd) = words.next() else { return };
    let args: Vec<&str> = words.collect();
    match cmd {
        "help" => match args.first() {
            None => {
                for (_, usage, what, _) in COMMANDS {
                    println!("  {usage:<16} {what}");
                }
            }
            Some(c) => match COMMANDS.iter().find(|(n, ..)| n == c) {
                Some((_, usage, what, more)) => {
                    println!("{usage}: {what}");
                    println!("  {more}");
                }
                None => println!("no command `{c}`; `help` lists them"),
            },
        },
        "models" => models(st),
        "load" if args.first().is_some_and(|a| a.contains(':')) => {
            crate::storage::load::cmd(&mut st.registry, &args)
        }
        "load" | "unload" | "switch" | "verify" => {
            let (name, context) = match (cmd, &args[..]) {
                (_, [name]) => (*name, None),
                ("load", [name, "--ctx", n]) => match n.parse::<usize>() {
                    Ok(n) => (*name, Some(n)),
                    Err(_) => {
                        println!("load: --ctx needs a number of positions, not `{n}`");
                        return;
                    }
                },
                _ => {
                    let usage = if cmd == "load" {
                        "load NAME [--ctx N]".to_string()
                    } else {
                        alloc::format!("{cmd} NAME")
                    };
                    println!("usage: {usage} (models: {})", st.registry.names());
                    return;
                }
            };
            match cmd {
                "load" => {
                    let t0 = time::uptime_ms();
                    match st.registry.load_with(name, context) {
                        Ok(()) => {
                            let i = st.registry.find(name).unwrap_or(0);
                            let (ctx, memory) = st.registry.slots[i]
                                .loaded
                                .as_ref()
                                .map_or((0, String::new()), |l| {
                                    (l.session.capacity(), l.memory_line())
                                });
                            println!(
                                "loaded `{name}` in {} ms, context {ctx}{}; {memory}",
                                time::uptime_ms() - t0,
                                if st.registry.active == Some(i) {
                                    ", active"
                                } else {
                                    ""
                                }
                            )
                        }
                        Err(e) => println!("load: {e}"),
                    }
                }
                "unload" => {
                    let before = crate::mem::heap_available();
                    match st.registry.unload(name) {
                        Ok(()) => {
                            // Read before anything else is allocated for the message.
                            let after = crate::mem::heap_available();
                            let heap = crate::mem::heap_line();
                            println!(
                                "unloaded `{name}`; {} returned to the heap ({} bytes); heap: {heap}",
                                human_bytes(after.saturating_sub(before)),
                                after.saturating_sub(before),
                            )
                        }
                        Err(e) => println!("unload: {e}"),
                    }
                }
                "switch" => match st.registry.switch(name) {
                    Ok(()) => println!("active model: {name}"),
                    Err(e) => println!("switch: {e}"),
                },
                _ => {
                    let t0 = time::uptime_ms();
                    match st.registry.verify(name) {
                        Ok((true, hex)) => println!(
                            "verify {name}: OK, SHA-256 {hex} matches the manifest ({} ms)",
                            time::uptime_ms() - t0
                        ),
                        Ok((false, hex)) => println!(
                            "verify {name}: MISMATCH, SHA-256 {hex} differs from the manifest"
                        ),
                        Err(e) => println!("verify: {e}"),
                    }
                }
            }
        }
        "model" => model_info(st),
        "generate" => {
            let prompt = rest_of(line, cmd);
            infer::generate(&mut st.registry, &st.settings, &mut st.perf, &prompt);
        }
        "talk" => talk(st),
        "set" => match args[..] {
            [key, value] => match st.settings.set(key, value) {
                Ok(()) => println!("{key} = {}", st.settings.get(key).unwrap_or_default()),
                Err(e) => println!("set: {e}"),
            },
            _ => println!("usage: set KEY VALUE (keys: {})", infer::KEYS.join(", ")),
        },
        "get" => match args[..] {
            [] => {
                for k in infer::KEYS {
                    println!("{k} = {}", st.settings.get(k).unwrap_or_default());
                }
            }
            [key] => match st.settings.get(key) {
                Some(v) => println!("{key} = {v}"),
                None => println!(
                    "get: unknown setting `{key}`; valid keys: {}",
                    infer::KEYS.join(", ")
                ),
            },
            _ => println!("usage: get [KEY]"),
        },
        "perf" => st.perf.print(),
        "bench" => match args[..] {
            [] => infer::bench(&mut st.registry, &mut st.perf, false),
            ["--json"] => infer::bench(&mut st.registry, &mut st.perf, true),
            _ => println!("usage: bench [--json]"),
        },
        "status" => status(st),
        "lspci" => {
            for l in crate::drivers::pci::listing(args.first() == Some(&"-v")) {
                println!("{l}");
            }
        }
        "net" => crate::net::print_status(),
        "disks" => crate::storage::print_disks(),
        "ls" => crate::storage::ls(args.first().copied().unwrap_or("/")),
        "ping" => match args[..] {
            [addr] => crate::net::ping(addr, 4),
            [addr, n] => match n.parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => crate::net::ping(addr, n),
                _ => println!("ping: COUNT must be 1-1000"),
            },
            _ => println!("usage: ping ADDR [COUNT]"),
        },
        "version" => {
            println!(
                "EMBODIOS kernel {} (x86_64, built with rustc {})",
                crate::VERSION,
                env!("EMBODIOS_RUSTC")
            );
            println!(
                "boot loader: {}, firmware: {}",
                boot.loader.as_str(),
                if boot.uefi { "UEFI" } else { "BIOS" }
            );
            println!("command line: {}", boot.cmdline.as_str());
            match crate::drivers::framebuffer::describe() {
                Some((w, h, cols, rows)) => {
                    println!("display: {w}x{h} framebuffer console, {cols}x{rows} text")
                }
                None => println!("display: none (serial console only)"),
            }
        }
        "mem" => mem(boot),
        "cpu" => cpu_info(),
        "uptime" => {
            let us = time::uptime_us();
            println!(
                "up {}.{:03} s ({} ms)",
                us / 1_000_000,
                (us / 1000) % 1000,
                us / 1000
            );
        }
        "clear" => out(b"\x1b[2J\x1b[H"),
        "reboot" => {
            println!("rebooting...");
            acpi::reboot();
        }
        "shutdown" => {
            println!("powering off...");
            acpi::power_off();
            println!("ACPI power-off did not work; halting");
            cpu::halt_forever();
        }
        other => {
            let best = NAMES
                .iter()
                .min_by_key(|n| edit_distance(other, n))
                .copied();
            match best {
                Some(b) if edit_distance(other, b) <= 3 => {
                    println!("unknown command `{other}`; did you mean `{b}`?")
                }
                _ => println!("unknown command `{other}`; type `help` for the list"),
            }
        }
    }
}

fn models(st: &State) {
    let r = &st.registry;
    crate::storage::load::print_disk_models(r);
    if r.slots.is_empty() {
        println!("no model modules (build the ISO with `cargo xtask iso --model FILE`)");
        return;
    }
    println!(
        "{:<12} {:<8} {:>8} {:>10}  {:<30} state",
        "name", "arch", "params", "memory", "quant mix"
    );
    for (i, slot) in r.slots.iter().enumerate() {
        match &slot.check {
            Ok(s) => {
                let extra = slot.loaded.as_ref().map_or(0, |l| l.beyond_weights());
                let state = match (&slot.loaded, r.active == Some(i)) {
                    (Some(_), true) => "loaded, active",
                    (Some(_), false) => "loaded",
                    (None, _) => "available",
                };
                println!(
                    "{:<12} {:<8} {:>8} {:>10}  {:<30} {state}",
                    slot.name,
                    s.arch,
                    human_count(s.params),
                    human_bytes(slot.bytes.len() as u64 + extra),
                    s.quant_mix_text()
                );
            }
            Err(e) => println!(
                "{:<12} {:<8} {:>8} {:>10}  {:<30} unusable: {e}",
                slot.name,
                "-",
                "-",
                human_bytes(slot.bytes.len() as u64),
                "-"
            ),
        }
    }
}

fn model_info(st: &mut State) {
    let Some(i) = st.registry.active else {
        println!("no active model: `models` lists them, `load NAME` loads one");
        return;
    };
    let slot = &st.registry.slots[i];
    let (Some(l), Ok(s)) = (&slot.loaded, &slot.check) else {
        println!("no active model");
        return;
    };
    let c = &l.model.config;
    println!("active model: {}", slot.name);
    if let Some(t) = &s.title {
        println!("  name:          {t}");
    }
    if let Some(m) = &slot.manifest {
        println!("  file:          {} ({} bytes)", m.file, m.size);
    }
    println!("  architecture:  {}", c.architecture);
    println!("  parameters:    {}", human_count(s.params));
    println!(
        "  layers {}, width {}, feed-forward {}, heads {} ({} KV), head size {}",
        c.n_layer, c.n_embd, c.n_ff, c.n_head, c.n_head_kv, c.head_dim
    );
    println!("  vocabulary:    {} tokens", c.vocab_size);
    println!(
        "  context:       {} tokens (trained {}), {} in use",
        l.session.capacity(),
        c.context_length,
        l.session.pos()
    );
    println!(
        "  chat template: {}",
        match &l.template {
            Ok(t) => t.name().to_string(),
            Err(e) => alloc::format!("none ({e})"),
        }
    );
    println!("  tensor types:  {}", s.quant_mix_text());
    let at = slot.bytes.as_ptr() as u64;
    let (large, _) = crate::arch::x86_64::paging::page_coverage(at, at + slot.bytes.len() as u64);
    println!(
        "  memory:        weights {} in place (at {at:#x}, {}% mapped with 2 MiB pages), KV cache {}",
        human_bytes(slot.bytes.len() as u64),
        (large * 100).checked_div(slot.bytes.len() as u64).unwrap_or(0),
        human_bytes(l.kv_bytes as u64),
    );
    println!("  beyond:        {}", l.memory_line());
}

fn talk(st: &mut State) {
    let Some((name, m)) = st.registry.active() else {
        println!("no active model: `models` lists them, `load NAME` loads one");
        return;
    };
    if let Err(e) = &m.template {
        println!("`{name}` has no usable chat template: {e}");
        return;
    }
    println!("talking to `{name}`: /exit leaves, /reset starts over, /perf, /set KEY VALUE; Ctrl-C stops a reply");
    let mut ed = LineEditor::new(TALK_PROMPT, &[]);
    loop {
        let line = read_line(&mut ed, None);
        let text = line.trim();
        let mut words = text.split_ascii_whitespace();
        match words.next() {
            None => continue,
            Some("/exit") | Some("/quit") => break,
            Some("/reset") => {
                infer::talk_reset(&mut st.registry);
                println!("(conversation cleared)");
            }
            Some("/perf") => st.perf.print(),
            Some("/set") => match (words.next(), words.next(), words.next()) {
                (Some(k), Some(v), None) => match st.settings.set(k, v) {
                    Ok(()) => println!("{k} = {}", st.settings.get(k).unwrap_or_default()),
                    Err(e) => println!("/set: {e}"),
                },
                _ => println!("usage: /set KEY VALUE (keys: {})", infer::KEYS.join(", ")),
            },
            Some(w) if w.starts_with('/') => {
                println!("unknown talk command `{w}`: /exit, /reset, /perf, /set KEY VALUE")
            }
            Some(_) => infer::talk_turn(&mut st.registry, &st.settings, &mut st.perf, text),
        }
    }
    println!("(left talk)");
}

fn status(st: &mut State) {
    let us = time::uptime_us();
    println!("uptime:  {}.{:03} s", us / 1_000_000, (us / 1000) % 1000);
    let s = crate::mem::stats();
    println!(
        "memory:  {} MiB usable, {} KiB used, heap {} of {} KiB",
        s.usable_bytes >> 20,
        used_kib(&s),
        s.heap_used / 1024,
        s.heap_total / 1024,
    );
    println!("heap:    {}", crate::mem::heap_line());
    println!(
        "cores:   {} online, inference uses {}",
        smp::online_cpus(),
        crate::parallel::threads()
    );
    let loaded: Vec<String> = st
        .registry
        .slots
        .iter()
        .filter_map(|s| {
            let l = s.loaded.as_ref()?;
            Some(alloc::format!(
                "{} ({} beyond the weights)",
                s.name,
                human_bytes(l.beyond_weights())
            ))
        })
        .collect();
    println!(
        "models:  {} in the ISO, loaded: {}",
        st.registry.slots.len(),
        if loaded.is_empty() {
            "none".to_string()
        } else {
            loaded.join(", ")
        }
    );
    match st.registry.active {
        Some(i) => println!("active:  {}", st.registry.slots[i].name),
        None => println!("active:  none"),
    }
    match &st.perf.last {
        Some(f) => println!("last:    {}", f.line()),
        None => println!("last:    no generation yet"),
    }
    println!("api:     {}", crate::httpd::status_line());
}

fn mem(boot: &BootInfo) {
    let s = crate::mem::stats();
    let k = memory::layout();
    println!("usable RAM:   {:>8} KiB", s.usable_bytes / 1024);
    println!("free frames:  {:>8} KiB", s.free_frame_bytes / 1024);
    println!(
        "heap:         {:>8} KiB total, {} KiB used in {} allocations",
        s.heap_total / 1024,
        s.heap_used / 1024,
        s.heap_allocations
    );
    println!(
        "used:         {:>8} KiB (RAM not free as frames or heap)",
        used_kib(&s)
    );
    println!(
        "kernel image: {:>8} KiB at {:#x}..{:#x}",
        (k.end - k.start) / 1024,
        k.start,
        k.end
    );
    for m in boot.modules() {
        let (large, small) = crate::arch::x86_64::paging::page_coverage(m.start, m.end);
        println!(
            "module: {} ({} KiB at {:#x}; mapped {} KiB with 2 MiB pages, {} KiB with 4 KiB pages)",
            m.name.as_str(),
            (m.end - m.start) / 1024,
            m.start,
            large / 1024,
            small / 1024
        );
    }
}

/// RAM in use: usable RAM minus free frames minus free heap.
pub fn used_kib(s: &crate::mem::Stats) -> u64 {
    s.usable_bytes
        .saturating_sub(s.free_frame_bytes)
        .saturating_sub(s.heap_total - s.heap_used)
        / 1024
}

fn cpu_info() {
    let id = raw_cpuid::CpuId::new();
    let brand = id.get_processor_brand_string();
    let vendor = id.get_vendor_info();
    println!(
        "cpu: {} ({})",
        brand
            .as_ref()
            .map(|b| b.as_str().trim())
            .unwrap_or("unknown"),
        vendor.as_ref().map(|v| v.as_str()).unwrap_or("?")
    );
    println!(
        "cores: {} online of {} listed by ACPI",
        smp::online_cpus(),
        acpi::info().cpus().len().max(1)
    );
    for i in 0..smp::online_cpus() {
        let p = smp::percpu(i);
        println!(
            "  cpu {i}: apic id {}, online, {} pool jobs run",
            p.apic_id.load(core::sync::atomic::Ordering::Relaxed),
            p.jobs_run.load(core::sync::atomic::Ordering::Relaxed)
        );
    }
    let f = id.get_feature_info();
    let e = id.get_extended_feature_info();
    let mut feats = alloc::vec::Vec::new();
    let checks = [
        ("sse2", f.as_ref().is_some_and(|f| f.has_sse2())),
        ("sse4.2", f.as_ref().is_some_and(|f| f.has_sse42())),
        ("avx", f.as_ref().is_some_and(|f| f.has_avx())),
        ("fma", f.as_ref().is_some_and(|f| f.has_fma())),
        ("avx2", e.as_ref().is_some_and(|e| e.has_avx2())),
        ("avx512f", e.as_ref().is_some_and(|e| e.has_avx512f())),
        ("x2apic", f.as_ref().is_some_and(|f| f.has_x2apic())),
        ("xsave", f.as_ref().is_some_and(|f| f.has_xsave())),
    ];
    for (name, on) in checks {
        if on {
            feats.push(name);
        }
    }
    println!("features: {}", feats.join(" "));
    println!("AVX2: {}", if simd::has_avx2() { "on" } else { "off" });
    println!(
        "engine kernels: {}, panel kernels: {}",
        embodios_quant::active_kernel_set(),
        embodios_quant::active_panel_set()
    );
    match interrupts::avx512_state_bytes() {
        Some(n) => println!(
            "AVX-512: on (XSAVE state {n} of {} bytes saved per interrupt)",
            interrupts::XSAVE_AREA_BYTES
        ),
        None => println!("AVX-512: off"),
    }
    let khz = time::tsc_khz();
    println!("TSC: {}.{:03} MHz", khz / 1000, khz % 1000);
    println!(
        "APIC: {}",
        if crate::arch::x86_64::apic::is_x2apic() {
            "x2APIC"
        } else {
            "xAPIC"
        }
    );
    println!(
        "interrupts: timer {}, serial {}, keyboard {}",
        interrupts::TIMER_TICKS.load(core::sync::atomic::Ordering::Relaxed),
        interrupts::SERIAL_IRQS.load(core::sync::atomic::Ordering::Relaxed),
        interrupts::KEYBOARD_IRQS.load(core::sync::atomic::Ordering::Relaxed)
    );
}
