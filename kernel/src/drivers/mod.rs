//! Device drivers: the 16550 serial port, the framebuffer text console and the PS/2
//! keyboard.

#![allow(unsafe_code)]

pub mod framebuffer;
pub mod keyboard;
pub mod serial;
