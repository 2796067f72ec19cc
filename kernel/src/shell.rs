//! The serial shell: reads lines with the line editor and runs built-in commands.

use crate::arch::x86_64::{self as cpu, acpi, boot::BootInfo, interrupts, memory, simd, smp, time};
use crate::drivers::serial;
use crate::line_editor::{edit_distance, Event, LineEditor};

/// Prompt printed before every command line.
pub const PROMPT: &str = "embodios> ";

/// Built-in commands with a one-line description.
const COMMANDS: &[(&str, &str)] = &[
    ("help", "list commands"),
    ("version", "kernel version and build"),
    ("mem", "memory usage"),
    ("cpu", "cores, CPU features, TSC rate"),
    ("uptime", "time since boot"),
    ("clear", "clear the screen"),
    ("reboot", "restart the machine"),
    ("shutdown", "power off"),
];

const NAMES: &[&str] = &[
    "help", "version", "mem", "cpu", "uptime", "clear", "reboot", "shutdown",
];

fn out(bytes: &[u8]) {
    crate::console::write_bytes(bytes);
}

/// Runs the shell forever.
pub fn run(boot: &BootInfo) -> ! {
    println!(
        "boot took {} ms; type `help` for commands",
        time::uptime_ms()
    );
    let mut ed = LineEditor::new(PROMPT, NAMES);
    ed.start(&mut out);
    let mut input = alloc::vec::Vec::new();
    loop {
        while let Some(b) = serial::read_byte() {
            input.push(b);
        }
        crate::drivers::keyboard::poll(&mut input);
        for b in input.drain(..) {
            match ed.feed(b, &mut out) {
                Event::None => {}
                Event::Cancel => ed.start(&mut out),
                Event::Line(line) => {
                    execute(line.trim(), boot);
                    ed.start(&mut out);
                }
            }
        }
        interrupts::enable_and_wait();
    }
}

/// Runs one command line.
pub fn execute(line: &str, boot: &BootInfo) {
    let mut words = line.split_ascii_whitespace();
    let Some(cmd) = words.next() else { return };
    match cmd {
        "help" => {
            for (name, what) in COMMANDS {
                println!("  {name:<10} {what}");
            }
        }
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
        println!(
            "module: {} ({} KiB at {:#x})",
            m.name.as_str(),
            (m.end - m.start) / 1024,
            m.start
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
