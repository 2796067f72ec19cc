// EMBODIOS x86_64 boot code (AT&T syntax): multiboot2 header, 32-bit entry from GRUB,
// boot page tables, long mode, SSE/AVX enabling, and the application-processor path
// (real-mode trampoline -> protected mode -> long mode). No Rust runs before SIMD is on,
// because the kernel is compiled hard-float and may touch xmm registers anywhere.

.set MB2_MAGIC, 0xe85250d6
.set MB2_BOOT_MAGIC, 0x36d76289

// ---------------------------------------------------------------------------
// Multiboot2 header: must sit in the first 32 KiB of the ELF file, 8-byte aligned.
.section .multiboot_header, "a"
.balign 8
mb2_header_start:
    .long MB2_MAGIC
    .long 0                                   // architecture: i386 (32-bit protected mode entry)
    .long mb2_header_end - mb2_header_start
    .long 0x100000000 - (MB2_MAGIC + (mb2_header_end - mb2_header_start))
    .balign 8
    // Framebuffer request (optional: the kernel also runs without one): 1024x768x32.
    .short 5
    .short 1
    .long 20
    .long 1024
    .long 768
    .long 32
    .balign 8
    // End tag.
    .short 0
    .short 0
    .long 8
mb2_header_end:

// ---------------------------------------------------------------------------
// Boot data: the GDT used by the boot processor and by every AP on its way up.
.section .rodata
.balign 16
.global boot_gdt
boot_gdt:
    .quad 0                                   // 0x00 null
    .quad 0x00AF9A000000FFFF                  // 0x08 64-bit code, ring 0
    .quad 0x00CF92000000FFFF                  // 0x10 flat data (valid in 32- and 64-bit mode)
    .quad 0x00CF9A000000FFFF                  // 0x18 flat 32-bit code (AP trampoline)
boot_gdt_end:
.balign 8
boot_gdtr:
    .short boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

.section .bss
.balign 4096
// Boot page tables: one PML4, one PDPT, four page directories identity-mapping the
// first 4 GiB with 2 MiB pages. Rust replaces them early; APs still use them to reach
// long mode before switching to the kernel's tables.
.global boot_pml4
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096
boot_tables_end:
// Boot stack with a guard page below it (unmapped by the Rust paging code).
.global boot_stack_guard
boot_stack_guard:
    .skip 4096
.global boot_stack_bottom
boot_stack_bottom:
    .skip 256 * 1024
.global boot_stack_top
boot_stack_top:

.section .data
.global BOOT_MB_MAGIC
BOOT_MB_MAGIC:
    .long 0
.global BOOT_MB_INFO
BOOT_MB_INFO:
    .long 0
boot_nx_ok:
    .long 0
.balign 8
.global AP_BOOT_STACK
AP_BOOT_STACK:
    .quad 0
.global AP_BOOT_CPU
AP_BOOT_CPU:
    .quad 0

// ---------------------------------------------------------------------------
// Switches a 32-bit protected-mode CPU to long mode using the boot page tables, with
// SSE enabled (CR0.EM=0, MP=1, NE=1; CR4.OSFXSR|OSXMMEXCPT), write protection on for
// ring 0 (CR0.WP) and no-execute enabled when the CPU has it; then far-jumps to `target`.
.macro ENTER_LONG_MODE target
    mov %cr4, %eax
    or $((1 << 5) | (1 << 7) | (1 << 9) | (1 << 10)), %eax   // PAE, PGE, OSFXSR, OSXMMEXCPT
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx                     // IA32_EFER
    rdmsr
    or $(1 << 8), %eax                        // LME
    cmpl $0, boot_nx_ok
    je 91f
    or $(1 << 11), %eax                       // NXE
91:
    wrmsr
    mov %cr0, %eax
    and $~((1 << 2) | (1 << 3)), %eax         // clear EM and TS
    or $((1 << 31) | (1 << 16) | (1 << 5) | (1 << 1) | 1), %eax  // PG, WP, NE, MP, PE
    mov %eax, %cr0
    lgdt boot_gdtr
    ljmp $0x08, $\target
.endm

.section .text.boot, "ax"
.code32
.global _start
_start:
    cli
    cld
    mov $boot_stack_top, %esp
    mov %eax, BOOT_MB_MAGIC
    mov %ebx, BOOT_MB_INFO
    cmp $MB2_BOOT_MAGIC, %eax
    jne boot_fail

    // Long mode available? (CPUID 0x80000001 EDX bit 29); NX is bit 20.
    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb boot_fail
    mov $0x80000001, %eax
    cpuid
    test $(1 << 29), %edx
    jz boot_fail
    test $(1 << 20), %edx
    jz 1f
    movl $1, boot_nx_ok
1:
    // Zero the boot tables (GRUB zero-fills .bss, but do not rely on it here).
    mov $boot_pml4, %edi
    mov $((boot_tables_end - boot_pml4) / 4), %ecx
    xor %eax, %eax
    rep stosl

    mov $boot_pdpt, %eax
    or $3, %eax                               // present, writable
    mov %eax, boot_pml4
    mov $boot_pd, %eax
    or $3, %eax
    mov %eax, boot_pdpt
    add $4096, %eax
    mov %eax, boot_pdpt + 8
    add $4096, %eax
    mov %eax, boot_pdpt + 16
    add $4096, %eax
    mov %eax, boot_pdpt + 24

    // 2048 entries of 2 MiB: entry i maps i * 2 MiB (present, writable, huge).
    xor %ecx, %ecx
2:
    mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %ecx, %edx
    shr $11, %edx
    mov %eax, boot_pd(, %ecx, 8)
    mov %edx, boot_pd + 4(, %ecx, 8)
    inc %ecx
    cmp $2048, %ecx
    jne 2b

    ENTER_LONG_MODE bsp_long_mode

// Not a multiboot2 loader or no long mode: write "EMBODIOS: boot failed" to COM1 and stop.
boot_fail:
    mov $boot_fail_msg, %esi
3:
    lodsb
    test %al, %al
    jz 5f
    mov %al, %bl
    mov $0x3fd, %dx
4:
    inb %dx, %al
    test $0x20, %al
    jz 4b
    mov $0x3f8, %dx
    mov %bl, %al
    outb %al, %dx
    jmp 3b
5:
    cli
    hlt
    jmp 5b

// Application processors arrive here in 32-bit protected mode from the trampoline.
.global ap_prot_entry
ap_prot_entry:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    ENTER_LONG_MODE ap_long_mode

.code64
bsp_long_mode:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp
    xor %ebp, %ebp
    call enable_simd
    mov BOOT_MB_MAGIC(%rip), %edi
    mov BOOT_MB_INFO(%rip), %esi
    call kmain_entry
6:
    cli
    hlt
    jmp 6b

ap_long_mode:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov AP_BOOT_STACK(%rip), %rsp
    xor %ebp, %ebp
    call enable_simd
    mov AP_BOOT_CPU(%rip), %rdi
    call ap_main
7:
    cli
    hlt
    jmp 7b

// Enables x87/SSE state (FNINIT) and, when CPUID offers XSAVE, CR4.OSXSAVE with
// XCR0 = x87 | SSE, plus AVX when CPUID offers it, plus the three AVX-512 components
// (opmask, upper halves of ZMM0-15, ZMM16-31) when CPUID reports AVX512F and XSAVE
// manages all three. isr.S saves all of them (its area holds the standard layout up to
// ZMM31). Runs on every core (BSP and APs), since XCR0 is per core. Clobbers rax, rcx,
// rdx, rsi.
.global enable_simd
enable_simd:
    push %rbx
    fninit
    mov $1, %eax
    cpuid
    test $(1 << 26), %ecx                     // XSAVE
    jz 9f
    mov %cr4, %rax
    or $(1 << 18), %rax                       // OSXSAVE
    mov %rax, %cr4
    mov $3, %esi                              // x87 | SSE
    test $(1 << 28), %ecx                     // AVX
    jz 8f
    or $4, %esi                               // | AVX (upper ymm halves)
    xor %eax, %eax
    cpuid
    cmp $0xd, %eax                            // leaves 7 and 0xD exist?
    jb 8f
    mov $7, %eax
    xor %ecx, %ecx
    cpuid
    test $(1 << 16), %ebx                     // AVX512F
    jz 8f
    mov $0xd, %eax
    xor %ecx, %ecx
    cpuid                                     // EAX: XCR0 bits XSAVE supports
    and $0xe0, %eax
    cmp $0xe0, %eax
    jne 8f
    or $0xe0, %esi                            // | opmask | ZMM_Hi256 | Hi16_ZMM
8:
    mov %esi, %eax
    xor %edx, %edx
    xor %ecx, %ecx
    xsetbv
9:
    pop %rbx
    ret

// ---------------------------------------------------------------------------
// AP trampoline: copied to a page below 1 MiB; a SIPI starts the AP here in real
// mode with CS = page >> 4 and IP = 0. It only loads the boot GDT and enters 32-bit
// protected mode at `ap_prot_entry` (an absolute address in the kernel image).
.section .rodata.ap_trampoline, "a"
.code16
.global ap_trampoline_start
ap_trampoline_start:
    cli
    cld
    lgdtl %cs:(ap_tramp_gdtr - ap_trampoline_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x18, $ap_prot_entry
.balign 8
ap_tramp_gdtr:
    .short boot_gdt_end - boot_gdt - 1
    .long boot_gdt
.global ap_trampoline_end
ap_trampoline_end:
.code64

.section .rodata
boot_fail_msg:
    .asciz "EMBODIOS: boot failed (not multiboot2 or no long mode)\r\n"
