//! Framebuffer text console: draws console output with the Noto Sans Mono bitmap font
//! into the linear framebuffer GRUB set up (32 bits per pixel). A copy of the screen is
//! kept in RAM so scrolling never reads the (write-combined) framebuffer.

use alloc::vec;
use alloc::vec::Vec;
use noto_sans_mono_bitmap::{get_raster, get_raster_width, FontWeight, RasterHeight};
use spin::Mutex;

const WEIGHT: FontWeight = FontWeight::Regular;
const HEIGHT: RasterHeight = RasterHeight::Size16;

/// Pixel layout: bit positions of the 8-bit red, green and blue fields.
#[derive(Debug, Clone, Copy)]
pub struct PixelFormat {
    /// Red field position.
    pub red: u8,
    /// Green field position.
    pub green: u8,
    /// Blue field position.
    pub blue: u8,
}

struct Console {
    fb: &'static mut [u32],
    back: Vec<u32>,
    stride: usize,
    width: usize,
    height: usize,
    cell_w: usize,
    cell_h: usize,
    cols: usize,
    rows: usize,
    col: usize,
    row: usize,
    format: PixelFormat,
    esc: Option<Vec<u8>>,
}

static CONSOLE: Mutex<Option<Console>> = Mutex::new(None);

/// Description of the active framebuffer console, for `version`.
pub fn describe() -> Option<(usize, usize, usize, usize)> {
    let c = CONSOLE.lock();
    c.as_ref().map(|c| (c.width, c.height, c.cols, c.rows))
}

/// Takes over the framebuffer at `addr` (identity-mapped) if it is 32 bpp.
pub fn init(addr: u64, pitch: u32, width: u32, height: u32, bpp: u8, format: PixelFormat) {
    if bpp != 32 || !pitch.is_multiple_of(4) || width == 0 || height == 0 {
        return;
    }
    let stride = pitch as usize / 4;
    let len = stride * height as usize;
    // SAFETY: the boot loader reported this framebuffer; the kernel maps it (identity,
    // write-combined) and this console is its only user.
    let fb = unsafe { core::slice::from_raw_parts_mut(addr as *mut u32, len) };
    let cell_w = get_raster_width(WEIGHT, HEIGHT);
    let cell_h = HEIGHT.val();
    let c = Console {
        fb,
        back: vec![0; len],
        stride,
        width: width as usize,
        height: height as usize,
        cell_w,
        cell_h,
        cols: width as usize / cell_w,
        rows: height as usize / cell_h,
        col: 0,
        row: 0,
        format,
        esc: None,
    };
    c.fb.fill(0);
    *CONSOLE.lock() = Some(c);
}

/// Draws `bytes` (UTF-8 text with a few ANSI sequences) on the console, if any.
pub fn write_bytes(bytes: &[u8]) {
    if let Some(c) = CONSOLE.lock().as_mut() {
        for &b in bytes {
            c.byte(b);
        }
    }
}

/// Breaks the lock (panic path only).
pub fn force_unlock() {
    if CONSOLE.is_locked() {
        // SAFETY: panic path with interrupts off; the holder will not run again.
        unsafe { CONSOLE.force_unlock() };
    }
}

/// Fraction of lit pixels in the first text row (framebuffer self-test).
pub fn first_row_lit() -> Option<usize> {
    let c = CONSOLE.lock();
    let c = c.as_ref()?;
    Some(
        (0..c.cell_h)
            .map(|y| {
                c.fb[y * c.stride..y * c.stride + c.width]
                    .iter()
                    .filter(|&&p| p != 0)
                    .count()
            })
            .sum(),
    )
}

impl Console {
    fn byte(&mut self, b: u8) {
        if let Some(seq) = self.esc.as_mut() {
            seq.push(b);
            if seq.len() == 1 && b != b'[' {
                self.esc = None;
            } else if seq.len() > 1 && (b as char).is_ascii_alphabetic()
                || b == b'~'
                || seq.len() > 16
            {
                let seq = self.esc.take().unwrap_or_default();
                self.csi(&seq);
            }
            return;
        }
        match b {
            0x1b => self.esc = Some(Vec::new()),
            b'\r' => self.col = 0,
            b'\n' => self.newline(),
            0x08 => self.col = self.col.saturating_sub(1),
            0x20..=0x7e => {
                if self.col >= self.cols {
                    self.newline();
                    self.col = 0;
                }
                self.draw(self.col, self.row, b as char);
                self.col += 1;
            }
            _ => {}
        }
    }

    fn csi(&mut self, seq: &[u8]) {
        let (Some(&cmd), params) = (seq.last(), &seq[1..seq.len().saturating_sub(1).max(1)]) else {
            return;
        };
        let n = core::str::from_utf8(params)
            .ok()
            .and_then(|s| s.parse::<usize>().ok());
        match cmd {
            b'D' => self.col = self.col.saturating_sub(n.unwrap_or(1)),
            b'C' => self.col = (self.col + n.unwrap_or(1)).min(self.cols.saturating_sub(1)),
            b'K' => {
                for col in self.col..self.cols {
                    self.draw(col, self.row, ' ');
                }
            }
            b'H' => {
                self.col = 0;
                self.row = 0;
            }
            b'J' if n == Some(2) => {
                self.back.fill(0);
                self.fb.fill(0);
            }
            _ => {}
        }
    }

    fn newline(&mut self) {
        if self.row + 1 < self.rows {
            self.row += 1;
            return;
        }
        let line = self.cell_h * self.stride;
        let used = self.rows * line;
        self.back.copy_within(line..used, 0);
        self.back[used - line..used].fill(0);
        self.fb[..used].copy_from_slice(&self.back[..used]);
    }

    fn draw(&mut self, col: usize, row: usize, c: char) {
        let raster = get_raster(c, WEIGHT, HEIGHT).or_else(|| get_raster('?', WEIGHT, HEIGHT));
        let (x0, y0) = (col * self.cell_w, row * self.cell_h);
        for y in 0..self.cell_h {
            let at = (y0 + y) * self.stride + x0;
            for x in 0..self.cell_w {
                let v = raster.as_ref().and_then(|r| r.pixel(x, y)).unwrap_or(0);
                let px = self.pixel(v);
                self.back[at + x] = px;
                self.fb[at + x] = px;
            }
        }
    }

    fn pixel(&self, intensity: u8) -> u32 {
        let i = u32::from(intensity);
        (i << self.format.red) | (i << self.format.green) | (i << self.format.blue)
    }
}
