// Common interrupt entry (AT&T syntax): every stub pushed an error code (or 0) and its
// vector. Saves all general registers, then the whole vector state (XSAVE of every
// component XCR0 enables: x87, SSE, AVX and, where the CPU has it, AVX-512; FXSAVE
// without XSAVE) in a 64-byte aligned area on the stack, calls
// `trap_dispatch(&mut TrapFrame)` and restores everything. The area is 2688 bytes, the
// standard XSAVE layout through ZMM16-31 (interrupts::XSAVE_AREA_BYTES; boot checks
// that CPUID's size for the enabled components fits).
.section .text
.global isr_common
isr_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rbx
    sub $2688, %rsp
    and $-64, %rsp
    cmpb $0, USE_XSAVE(%rip)
    je 1f
    // XRSTOR faults on a non-zero reserved header, so clear the 64-byte XSAVE header.
    movq $0, 512(%rsp)
    movq $0, 520(%rsp)
    movq $0, 528(%rsp)
    movq $0, 536(%rsp)
    movq $0, 544(%rsp)
    movq $0, 552(%rsp)
    movq $0, 560(%rsp)
    movq $0, 568(%rsp)
    mov $-1, %eax
    mov $-1, %edx
    xsave64 (%rsp)
    jmp 2f
1:
    fxsave64 (%rsp)
2:
    cld
    mov %rbx, %rdi
    call trap_dispatch
    cmpb $0, USE_XSAVE(%rip)
    je 3f
    mov $-1, %eax
    mov $-1, %edx
    xrstor64 (%rsp)
    jmp 4f
3:
    fxrstor64 (%rsp)
4:
    mov %rbx, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp
    iretq
