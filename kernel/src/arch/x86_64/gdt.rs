//! Per-CPU global descriptor table and task state segment. Each CPU gets its own GDT
//! (the TSS descriptor is per CPU) with an IST stack for double faults, NMIs and
//! machine checks, so a kernel stack overflow still reports instead of triple-faulting.

use alloc::boxed::Box;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// Selector of the 64-bit kernel code segment (same in the boot GDT and per-CPU GDTs).
pub const KERNEL_CODE_SELECTOR: u16 = 0x08;

/// Size of each CPU's critical-exception (IST) stack.
const IST_STACK_SIZE: usize = 32 * 1024;

/// Builds and loads a GDT and TSS for the calling CPU (heap must be ready).
pub fn init_cpu() {
    let ist_top =
        super::memory::alloc_stack(IST_STACK_SIZE).expect("out of memory for an interrupt stack");
    let mut tss = TaskStateSegment::new();
    tss.interrupt_stack_table[usize::from(super::interrupts::IST_CRITICAL) - 1] =
        VirtAddr::new(ist_top);
    let tss: &'static TaskStateSegment = Box::leak(Box::new(tss));
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss_sel = gdt.append(Descriptor::tss_segment(tss));
    assert_eq!(code.0, KERNEL_CODE_SELECTOR);
    let gdt: &'static GlobalDescriptorTable = Box::leak(Box::new(gdt));
    gdt.load();
    // SAFETY: the selectors index valid descriptors of the GDT just loaded; the TSS is
    // leaked, so it lives as long as the CPU uses it.
    unsafe {
        CS::set_reg(code);
        DS::set_reg(data);
        ES::set_reg(data);
        SS::set_reg(data);
        load_tss(SegmentSelector(tss_sel.0));
    }
}
