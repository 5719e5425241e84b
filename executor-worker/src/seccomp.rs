//! The seccomp filter of the program and test processes: classic BPF assembled here
//! and handed to the fork-server as raw bytes (it installs it with
//! `prctl(PR_SET_SECCOMP)` after `PR_SET_NO_NEW_PRIVS`, so this crate needs no `unsafe`).
//!
//! The filter is a deny-list: a test program needs ordinary computation, memory, files
//! in its work directory, pipes, and perhaps `fork` or threads, so everything else that
//! reaches kernel attack surface or another process is refused with `EPERM`.
//!
//! It is assembled by hand rather than by `seccompiler` because every execution installs
//! it twice (tester and program), and installing costs the kernel time per instruction
//! (checking, converting and JIT-compiling the program: about 3 µs per instruction on
//! the development VM). `seccompiler` spends about six instructions per syscall (381 in
//! all); here an unconditionally denied syscall costs one comparison that jumps to a
//! shared return (about 80 in all), which saves about 1 ms of CPU per execution. The
//! `seccompiler` program it replaced is kept in the tests as the reference, and a small
//! BPF interpreter checks that both give the same answer for every syscall number and
//! every argument pattern the rules look at.

use crate::error::ExecutorError;

/// What the filters deny, for the isolation report.
pub const DENIED_SUMMARY: &str = "EPERM for: ptrace, process_vm_readv/writev, kcmp, \
pidfd_getfd, mount and the new mount API, umount2, pivot_root, chroot, unshare, setns, \
clone with any namespace flag, bpf, perf_event_open, userfaultfd, io_uring, kexec, \
reboot, kernel modules, swap, acct, quotactl, keyctl/add_key/request_key, clock and \
time setting, sethostname/setdomainname, syslog, vhangup, open_by_handle_at, \
name_to_handle_at, fanotify_init, move_pages/migrate_pages, execve/execveat, \
iopl/ioperm/uselib (x86_64), sockets other than AF_UNIX, raw and packet sockets; \
ENOSYS for clone3 (so libc falls back to clone, whose flags can be checked); \
EPERM for x32-ABI syscall numbers (x86_64)";

const EPERM: u32 = libc::EPERM as u32;
/// The obsolete packet socket type (libc deprecates the constant; we refuse it).
const SOCK_PACKET: u32 = 10;
/// The bits of socket(2)'s type argument that hold the type (the rest are flags).
const SOCKET_TYPE_MASK: u32 = 0xf;
const ENOSYS: u32 = libc::ENOSYS as u32;

fn denied_syscalls() -> Vec<i64> {
    let mut calls = vec![
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_kcmp,
        libc::SYS_pidfd_getfd,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_quotactl_fd,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_syslog,
        libc::SYS_vhangup,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_fanotify_init,
        libc::SYS_move_pages,
        libc::SYS_migrate_pages,
        libc::SYS_execve,
        libc::SYS_execveat,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([libc::SYS_iopl, libc::SYS_ioperm, libc::SYS_uselib]);
    calls
}

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Instruction {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_JMP_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
/// Offsets in the kernel's `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARGS: u32 = 16;

/// Offset of the low 32 bits of syscall argument `index` (the rules only look at those:
/// address families and socket types are ints, and every namespace flag of clone(2) is
/// below bit 32).
fn arg_low(index: u32) -> u32 {
    DATA_ARGS + 8 * index + if cfg!(target_endian = "little") { 0 } else { 4 }
}

/// The `AUDIT_ARCH_*` value of this build's architecture: a syscall made under another
/// ABI (32-bit x86 from x86_64) has other numbers, and kills the process.
fn audit_arch() -> Result<u32, ExecutorError> {
    const AUDIT_ARCH_64BIT_LE: u32 = 0x8000_0000 | 0x4000_0000;
    match std::env::consts::ARCH {
        "x86_64" => Ok(62 | AUDIT_ARCH_64BIT_LE),
        "aarch64" => Ok(183 | AUDIT_ARCH_64BIT_LE),
        "riscv64" => Ok(243 | AUDIT_ARCH_64BIT_LE),
        other => Err(ExecutorError::Seccomp(format!(
            "unsupported architecture: {other}"
        ))),
    }
}

/// Where a jump goes: the next instruction or one of the shared blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Next,
    Kill,
    Deny,
    NoSys,
    Clone,
    Socket,
    Socketpair,
}

/// An instruction whose jumps name targets, resolved to offsets by [`assemble`].
struct Step {
    code: u16,
    jt: Target,
    jf: Target,
    k: u32,
    label: Option<Target>,
}

fn stmt(code: u16, k: u32) -> Step {
    Step {
        code,
        jt: Target::Next,
        jf: Target::Next,
        k,
        label: None,
    }
}

fn jump(code: u16, k: u32, jt: Target, jf: Target) -> Step {
    Step {
        code,
        jt,
        jf,
        k,
        label: None,
    }
}

fn labelled(label: Target, step: Step) -> Step {
    Step {
        label: Some(label),
        ..step
    }
}

/// The whole filter, in order:
///
/// 1. another architecture's ABI: kill the process;
/// 2. on x86_64, x32-ABI numbers (the same kernel entry points offset by 0x4000_0000
///    under the same audit arch: a number-based deny-list must refuse the whole range
///    or it can be bypassed): `EPERM`;
/// 3. clone3 passes its flags in memory, where BPF cannot look: `ENOSYS`, so that libc
///    falls back to clone(2), whose flags are checked;
/// 4. each denied syscall: `EPERM`;
/// 5. clone with any namespace flag, sockets other than AF_UNIX, raw and packet
///    sockets, socketpair other than AF_UNIX: `EPERM`;
/// 6. anything else is allowed.
fn filter() -> Result<Vec<Instruction>, ExecutorError> {
    use Target::*;
    let mut steps = vec![
        stmt(BPF_LD_W_ABS, DATA_ARCH),
        jump(BPF_JMP_JEQ_K, audit_arch()?, Next, Kill),
        stmt(BPF_LD_W_ABS, DATA_NR),
    ];
    if cfg!(target_arch = "x86_64") {
        steps.push(jump(BPF_JMP_JGE_K, 0x4000_0000, Deny, Next));
    }
    steps.push(jump(BPF_JMP_JEQ_K, libc::SYS_clone3 as u32, NoSys, Next));
    for call in denied_syscalls() {
        steps.push(jump(BPF_JMP_JEQ_K, call as u32, Deny, Next));
    }
    steps.push(jump(BPF_JMP_JEQ_K, libc::SYS_clone as u32, Clone, Next));
    steps.push(jump(BPF_JMP_JEQ_K, libc::SYS_socket as u32, Socket, Next));
    steps.push(jump(
        BPF_JMP_JEQ_K,
        libc::SYS_socketpair as u32,
        Socketpair,
        Next,
    ));
    steps.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));

    let namespace_flags = [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWCGROUP,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
    ]
    .iter()
    .fold(0_u32, |mask, &flag| mask | flag as u32);
    steps.push(labelled(Clone, stmt(BPF_LD_W_ABS, arg_low(0))));
    steps.push(jump(BPF_JMP_JSET_K, namespace_flags, Deny, Next));
    steps.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));

    steps.push(labelled(Socket, stmt(BPF_LD_W_ABS, arg_low(0))));
    steps.push(jump(BPF_JMP_JEQ_K, libc::AF_UNIX as u32, Next, Deny));
    steps.push(stmt(BPF_LD_W_ABS, arg_low(1)));
    steps.push(stmt(BPF_ALU_AND_K, SOCKET_TYPE_MASK));
    steps.push(jump(BPF_JMP_JEQ_K, libc::SOCK_RAW as u32, Deny, Next));
    steps.push(jump(BPF_JMP_JEQ_K, SOCK_PACKET, Deny, Next));
    steps.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));

    steps.push(labelled(Socketpair, stmt(BPF_LD_W_ABS, arg_low(0))));
    steps.push(jump(BPF_JMP_JEQ_K, libc::AF_UNIX as u32, Next, Deny));
    steps.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));

    steps.push(labelled(Deny, stmt(BPF_RET_K, SECCOMP_RET_ERRNO | EPERM)));
    steps.push(labelled(NoSys, stmt(BPF_RET_K, SECCOMP_RET_ERRNO | ENOSYS)));
    steps.push(labelled(Kill, stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS)));
    assemble(&steps)
}

/// Resolves the targets of `steps` to relative jump offsets (forward only, at most 255
/// instructions, as classic BPF requires).
fn assemble(steps: &[Step]) -> Result<Vec<Instruction>, ExecutorError> {
    let position = |target: Target| {
        steps
            .iter()
            .position(|step| step.label == Some(target))
            .ok_or_else(|| ExecutorError::Seccomp(format!("no block for {target:?}")))
    };
    steps
        .iter()
        .enumerate()
        .map(|(index, step)| {
            let offset = |target: Target| -> Result<u8, ExecutorError> {
                if target == Target::Next {
                    return Ok(0);
                }
                let to = position(target)?;
                to.checked_sub(index + 1)
                    .and_then(|distance| u8::try_from(distance).ok())
                    .ok_or_else(|| {
                        ExecutorError::Seccomp(format!(
                            "jump from {index} to {to} does not fit classic BPF"
                        ))
                    })
            };
            Ok(Instruction {
                code: step.code,
                jt: offset(step.jt)?,
                jf: offset(step.jf)?,
                k: step.k,
            })
        })
        .collect()
}

fn to_bytes(program: &[Instruction]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for instruction in program {
        bytes.extend_from_slice(&instruction.code.to_ne_bytes());
        bytes.push(instruction.jt);
        bytes.push(instruction.jf);
        bytes.extend_from_slice(&instruction.k.to_ne_bytes());
    }
    bytes
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The filter to install, as the hex of its raw `sock_filter` array.
pub fn program_hex() -> Result<String, ExecutorError> {
    let program = filter()?;
    if program.len() >= 4096 {
        return Err(ExecutorError::Seccomp(format!(
            "filter of {} instructions exceeds the kernel's limit",
            program.len()
        )));
    }
    Ok(to_hex(&to_bytes(&program)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    use super::*;

    /// The filter as `seccompiler` built it before (prologue, then its program): the
    /// reference the hand-assembled one must agree with.
    fn reference() -> Vec<Instruction> {
        let arch = TargetArch::try_from(std::env::consts::ARCH).unwrap();
        let condition = |arg, len, op, value| SeccompCondition::new(arg, len, op, value).unwrap();
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for call in denied_syscalls() {
            rules.insert(call, Vec::new());
        }
        let clone_rules = [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWCGROUP,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
        ]
        .iter()
        .map(|&flag| {
            let flag = flag as u64;
            SeccompRule::new(vec![condition(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )])
            .unwrap()
        })
        .collect();
        rules.insert(libc::SYS_clone, clone_rules);
        let mask = u64::from(SOCKET_TYPE_MASK);
        rules.insert(
            libc::SYS_socket,
            vec![
                SeccompRule::new(vec![condition(
                    0,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Ne,
                    libc::AF_UNIX as u64,
                )])
                .unwrap(),
                SeccompRule::new(vec![condition(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(mask),
                    libc::SOCK_RAW as u64,
                )])
                .unwrap(),
                SeccompRule::new(vec![condition(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(mask),
                    u64::from(SOCK_PACKET),
                )])
                .unwrap(),
            ],
        );
        rules.insert(
            libc::SYS_socketpair,
            vec![
                SeccompRule::new(vec![condition(
                    0,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Ne,
                    libc::AF_UNIX as u64,
                )])
                .unwrap(),
            ],
        );
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(EPERM),
            arch,
        )
        .unwrap();
        let compiled = BpfProgram::try_from(filter).unwrap();
        let mut program = vec![stmt_raw(BPF_LD_W_ABS, DATA_NR)];
        if cfg!(target_arch = "x86_64") {
            program.push(raw(BPF_JMP_JGE_K, 0, 1, 0x4000_0000));
            program.push(stmt_raw(BPF_RET_K, SECCOMP_RET_ERRNO | EPERM));
        }
        program.push(raw(BPF_JMP_JEQ_K, 0, 1, libc::SYS_clone3 as u32));
        program.push(stmt_raw(BPF_RET_K, SECCOMP_RET_ERRNO | ENOSYS));
        program.extend(
            compiled
                .iter()
                .map(|insn| raw(insn.code, insn.jt, insn.jf, insn.k)),
        );
        program
    }

    fn raw(code: u16, jt: u8, jf: u8, k: u32) -> Instruction {
        Instruction { code, jt, jf, k }
    }

    fn stmt_raw(code: u16, k: u32) -> Instruction {
        raw(code, 0, 0, k)
    }

    /// A classic BPF interpreter for what seccomp programs use (loads from
    /// `seccomp_data`, ALU, conditional and unconditional jumps, returns): the verdict
    /// of `program` for one syscall.
    fn run(program: &[Instruction], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = [0_u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (index, arg) in args.iter().enumerate() {
            let at = 16 + 8 * index;
            data[at..at + 8].copy_from_slice(&arg.to_ne_bytes());
        }
        let (mut acc, mut pc) = (0_u32, 0_usize);
        loop {
            let insn = program[pc];
            pc += 1;
            let class = insn.code & 0x07;
            match class {
                // BPF_LD | BPF_W | BPF_ABS
                0x00 => {
                    assert_eq!(insn.code, BPF_LD_W_ABS, "unexpected load {:#x}", insn.code);
                    let at = insn.k as usize;
                    acc = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                }
                // BPF_ALU with a constant
                0x04 => match insn.code & 0xf0 {
                    0x50 => acc &= insn.k,
                    0x40 => acc |= insn.k,
                    op => panic!("unexpected alu op {op:#x}"),
                },
                // BPF_JMP
                0x05 => {
                    let taken = match insn.code & 0xf0 {
                        0x00 => {
                            pc += insn.k as usize;
                            continue;
                        }
                        0x10 => acc == insn.k,
                        0x20 => acc > insn.k,
                        0x30 => acc >= insn.k,
                        0x40 => acc & insn.k != 0,
                        op => panic!("unexpected jump op {op:#x}"),
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
                // BPF_RET | BPF_K
                0x06 => return insn.k,
                _ => panic!("unexpected instruction {:#x}", insn.code),
            }
        }
    }

    fn native_arch() -> u32 {
        audit_arch().unwrap()
    }

    #[test]
    fn hand_assembled_filter_agrees_with_the_seccompiler_reference() {
        let ours = filter().unwrap();
        let reference = reference();
        assert!(
            ours.len() * 3 < reference.len(),
            "{} instructions against the reference's {}",
            ours.len(),
            reference.len()
        );
        let flags: Vec<u64> = [
            0,
            libc::SIGCHLD as u64,
            (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_THREAD) as u64,
            libc::CLONE_NEWNS as u64,
            libc::CLONE_NEWCGROUP as u64,
            libc::CLONE_NEWUTS as u64,
            libc::CLONE_NEWIPC as u64,
            libc::CLONE_NEWUSER as u64,
            libc::CLONE_NEWPID as u64,
            libc::CLONE_NEWNET as u64,
            (libc::CLONE_NEWPID | libc::SIGCHLD) as u64,
            1 << 40,
            (1 << 40) | libc::CLONE_NEWNET as u64,
            u64::MAX,
        ]
        .to_vec();
        let families = [
            libc::AF_UNIX as u64,
            libc::AF_INET as u64,
            libc::AF_INET6 as u64,
            libc::AF_NETLINK as u64,
            libc::AF_PACKET as u64,
            (1 << 32) | libc::AF_UNIX as u64,
        ];
        let types = [
            libc::SOCK_STREAM as u64,
            libc::SOCK_DGRAM as u64,
            libc::SOCK_RAW as u64,
            u64::from(SOCK_PACKET),
            (libc::SOCK_RAW | libc::SOCK_CLOEXEC) as u64,
            (libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64,
            libc::SOCK_SEQPACKET as u64,
        ];
        let mut numbers: Vec<u32> = (0..1024).collect();
        numbers.extend([0x4000_0000, 0x4000_0001, 0x4000_0000 + 101, u32::MAX]);
        let mut compared = 0;
        for nr in numbers {
            let mut arg_sets = vec![[0_u64; 6]];
            for &flag in &flags {
                arg_sets.push([flag, 0, 0, 0, 0, 0]);
            }
            for &family in &families {
                for &kind in &types {
                    arg_sets.push([family, kind, 0, 0, 0, 0]);
                }
            }
            for args in arg_sets {
                let arch = native_arch();
                assert_eq!(
                    run(&ours, nr, arch, args),
                    run(&reference, nr, arch, args),
                    "syscall {nr} with {args:x?}"
                );
                compared += 1;
            }
        }
        assert!(compared > 50_000);
    }

    #[test]
    fn filter_denies_what_it_promises() {
        let program = filter().unwrap();
        let arch = native_arch();
        let verdict = |nr: i64, args: [u64; 6]| run(&program, nr as u32, arch, args);
        let eperm = SECCOMP_RET_ERRNO | EPERM;
        for call in denied_syscalls() {
            assert_eq!(verdict(call, [0; 6]), eperm, "syscall {call}");
        }
        assert_eq!(
            verdict(libc::SYS_clone3, [0; 6]),
            SECCOMP_RET_ERRNO | ENOSYS
        );
        assert_eq!(verdict(libc::SYS_ptrace, [0; 6]), eperm);
        assert_eq!(
            verdict(libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            verdict(
                libc::SYS_clone,
                [(libc::CLONE_NEWPID | libc::SIGCHLD) as u64, 0, 0, 0, 0, 0]
            ),
            eperm
        );
        let socket = |family: i32, kind: i32| {
            verdict(libc::SYS_socket, [family as u64, kind as u64, 0, 0, 0, 0])
        };
        assert_eq!(socket(libc::AF_UNIX, libc::SOCK_STREAM), SECCOMP_RET_ALLOW);
        assert_eq!(socket(libc::AF_INET, libc::SOCK_STREAM), eperm);
        assert_eq!(
            socket(libc::AF_UNIX, libc::SOCK_RAW | libc::SOCK_CLOEXEC),
            eperm
        );
        assert_eq!(
            verdict(libc::SYS_socketpair, [libc::AF_INET as u64, 1, 0, 0, 0, 0]),
            eperm
        );
        assert_eq!(verdict(libc::SYS_read, [0; 6]), SECCOMP_RET_ALLOW);
        assert_eq!(verdict(libc::SYS_write, [0; 6]), SECCOMP_RET_ALLOW);
        // Another ABI's numbers mean other syscalls: the process is killed.
        assert_eq!(
            run(&program, libc::SYS_read as u32, arch ^ 1, [0; 6]),
            SECCOMP_RET_KILL_PROCESS
        );
        #[cfg(target_arch = "x86_64")]
        assert_eq!(verdict(0x4000_0000 + libc::SYS_ptrace, [0; 6]), eperm);
    }

    #[test]
    fn filter_is_whole_instructions_in_hex() {
        let hex = program_hex().unwrap();
        assert_eq!(hex.len() % 16, 0);
        assert_eq!(hex.len() / 16, filter().unwrap().len());
        for call in [libc::SYS_ptrace, libc::SYS_clone3] {
            let number = to_hex(&(call as u32).to_ne_bytes());
            assert!(hex.contains(&number), "syscall {call} missing");
        }
    }
}
