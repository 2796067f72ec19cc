//! PS/2 keyboard (i8042 controller, scancode set 1 as translated by the controller,
//! US layout): turns key presses into the same bytes a serial terminal sends, so the
//! line editor handles both inputs alike.

use pc_keyboard::{
    layouts::Us104Key, DecodedKey, HandleControl, KeyCode, PS2Keyboard, ScancodeSet1,
};
use spin::Mutex;

use crate::arch::x86_64::io::{inb, outb};

static KEYBOARD: Mutex<Option<PS2Keyboard<Us104Key, ScancodeSet1>>> = Mutex::new(None);

/// Sets up decoding and enables the controller's keyboard interrupt (IRQ 1).
pub fn init() {
    *KEYBOARD.lock() = Some(PS2Keyboard::new(
        ScancodeSet1::new(),
        Us104Key,
        HandleControl::MapLettersToUnicode,
    ));
    // Drain stale bytes, then set "keyboard interrupt on, translation on" in the
    // controller configuration byte (command 0x20 reads it, 0x60 writes it).
    for _ in 0..16 {
        if inb(0x64) & 1 == 0 {
            break;
        }
        let _ = inb(0x60);
    }
    if wait_input_clear() {
        outb(0x64, 0x20);
        if let Some(cfg) = read_data() {
            if wait_input_clear() {
                outb(0x64, 0x60);
                if wait_input_clear() {
                    outb(0x60, cfg | 0x01 | 0x40);
                }
            }
        }
    }
}

fn wait_input_clear() -> bool {
    (0..10_000).any(|_| inb(0x64) & 0x02 == 0)
}

fn read_data() -> Option<u8> {
    (0..10_000)
        .find(|_| inb(0x64) & 0x01 != 0)
        .map(|_| inb(0x60))
}

/// Reads pending scancodes and appends the bytes they stand for to `out`.
pub fn poll(out: &mut alloc::vec::Vec<u8>) {
    let mut guard = KEYBOARD.lock();
    let Some(kb) = guard.as_mut() else { return };
    for _ in 0..64 {
        let status = inb(0x64);
        if status & 0x01 == 0 {
            break;
        }
        let byte = inb(0x60);
        if status & 0x20 != 0 {
            continue; // mouse data
        }
        let Ok(Some(event)) = kb.add_byte(byte) else {
            continue;
        };
        match kb.process_keyevent(event) {
            Some(DecodedKey::Unicode(c)) => {
                let c = match c {
                    '\n' => '\r',
                    c => c,
                };
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            Some(DecodedKey::RawKey(code)) => {
                let seq: &[u8] = match code {
                    KeyCode::ArrowUp => b"\x1b[A",
                    KeyCode::ArrowDown => b"\x1b[B",
                    KeyCode::ArrowRight => b"\x1b[C",
                    KeyCode::ArrowLeft => b"\x1b[D",
                    KeyCode::Home => b"\x1b[H",
                    KeyCode::End => b"\x1b[F",
                    _ => b"",
                };
                out.extend_from_slice(seq);
            }
            None => {}
        }
    }
}
