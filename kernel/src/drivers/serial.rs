//! COM1 serial port (16550 UART at I/O port 0x3F8): console output and input.

use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550};

/// The console serial port (None until `init`, or when no UART answers).
pub struct Serial {
    uart: Option<Uart16550<PioBackend>>,
}

static PORT: Mutex<Serial> = Mutex::new(Serial { uart: None });

impl Serial {
    /// Sends every byte, waiting for FIFO space; the framebuffer console (if any) shows
    /// the same text.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        if let Some(uart) = self.uart.as_mut() {
            uart.send_bytes_exact(bytes);
        }
        super::framebuffer::write_bytes(bytes);
    }

    /// One received byte, if any is waiting.
    pub fn read_byte(&mut self) -> Option<u8> {
        self.uart.as_mut()?.try_receive_byte().ok()
    }
}

/// Initialises COM1 at 115200 8N1 with the FIFO on.
pub fn init() {
    // SAFETY: 0x3F8..0x3FF is the standard COM1 I/O port range on PCs; this driver is
    // its only user.
    let uart = unsafe { Uart16550::new_port(0x3f8) };
    let mut port = PORT.lock();
    if let Ok(mut uart) = uart {
        // Interrupt on every received byte (trigger level 1), so input ends the shell's
        // HLT at once instead of at the next timer tick.
        let config = Config {
            interrupts: uart_16550::spec::registers::IER::DATA_READY,
            fifo_trigger_level: Some(uart_16550::spec::registers::FifoTriggerLevel::One),
            ..Config::default()
        };
        if uart.init(config).is_ok() {
            port.uart = Some(uart);
        }
    }
}

/// Runs `f` with the port locked (interrupts off so an interrupt handler that
/// prints cannot deadlock against the code it interrupted).
pub fn with_port<R>(f: impl FnOnce(&mut Serial) -> R) -> R {
    crate::arch::x86_64::interrupts::without(|| f(&mut PORT.lock()))
}

/// Reads one byte if available.
pub fn read_byte() -> Option<u8> {
    with_port(|p| p.read_byte())
}

/// Breaks the lock (panic path only: the holder will never run again).
pub fn force_unlock() {
    if PORT.is_locked() {
        // SAFETY: called only on the panic path with interrupts off; the CPU that held
        // the lock is this one (re-entrant panic) or is no longer making progress.
        unsafe { PORT.force_unlock() };
    }
}
