/* SPDX-License-Identifier: Apache-2.0
 * Syscall numbers, and a syscall's number and arguments from its pt_regs at its exit, per
 * architecture: the raw syscall exit tracepoint (tp_btf/sys_exit) fires for every syscall and
 * carries only the pt_regs and the return value. At exit the argument registers still hold the
 * arguments (arm64's first one is in orig_x0, x0 holding the return value). */
#ifndef OKE_SYSCALLS_BPF_H
#define OKE_SYSCALLS_BPF_H

#if defined(__TARGET_ARCH_x86)
#define OKE_NR_read      0
#define OKE_NR_write     1
#define OKE_NR_close     3
#define OKE_NR_dup2      33
#define OKE_NR_sendfile  40
#define OKE_NR_dup3      292
#define OKE_NR_readv     19
#define OKE_NR_writev    20
#define OKE_NR_socket    41
#define OKE_NR_connect   42
#define OKE_NR_accept    43
#define OKE_NR_sendto    44
#define OKE_NR_recvfrom  45
#define OKE_NR_sendmsg   46
#define OKE_NR_recvmsg   47
#define OKE_NR_accept4   288
#define OKE_NR_recvmmsg  299
#define OKE_NR_sendmmsg  307
#define OKE_NR_mmap      9
#define OKE_SYSCALL_NR(regs) ((regs)->orig_ax)  /* a direct load through the BTF pointer */
#elif defined(__TARGET_ARCH_arm64)
/* asm-generic/unistd.h */
#define OKE_NR_dup3      24
#define OKE_NR_close     57
#define OKE_NR_sendfile  71
#define OKE_NR_read      63
#define OKE_NR_write     64
#define OKE_NR_readv     65
#define OKE_NR_writev    66
#define OKE_NR_socket    198
#define OKE_NR_connect   203
#define OKE_NR_accept    202
#define OKE_NR_sendto    206
#define OKE_NR_recvfrom  207
#define OKE_NR_sendmsg   211
#define OKE_NR_recvmsg   212
#define OKE_NR_accept4   242
#define OKE_NR_recvmmsg  243
#define OKE_NR_sendmmsg  269
#define OKE_NR_mmap      222
#define OKE_NR_dup2      (-1)  /* none: dup2 is dup3 on arm64 */
#define OKE_SYSCALL_NR(regs) ((regs)->syscallno)
#else
#error "unsupported architecture: add its syscall numbers to bpf/syscalls.bpf.h"
#endif

#define OKE_SYSCALL_ARG1(regs) PT_REGS_PARM1_SYSCALL(regs)
#define OKE_SYSCALL_ARG2(regs) PT_REGS_PARM2_SYSCALL(regs)
#define OKE_SYSCALL_ARG3(regs) PT_REGS_PARM3_SYSCALL(regs)
#define OKE_SYSCALL_ARG5(regs) PT_REGS_PARM5_SYSCALL(regs)

#endif
