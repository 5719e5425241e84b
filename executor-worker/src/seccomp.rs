//! The seccomp filters of the program and test processes, compiled to classic BPF with
//! `seccompiler` and handed to the fork-server as raw bytes (it installs them with
//! `prctl(PR_SET_SECCOMP)` after `PR_SET_NO_NEW_PRIVS`, so this crate needs no `unsafe`).
//!
//! The filters are deny-lists: a test program needs ordinary computation, memory, files
//! in its work directory, pipes, and perhaps `fork` or threads, so everything else that
//! reaches kernel attack surface or another process is refused with `EPERM`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

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
const SOCK_PACKET: u64 = 10;
const ENOSYS: u32 = libc::ENOSYS as u32;

fn target_arch() -> Result<TargetArch, ExecutorError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|err| ExecutorError::Seccomp(format!("unsupported architecture: {err}")))
}

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

fn condition(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, ExecutorError> {
    SeccompCondition::new(arg, len, op, value)
        .map_err(|err| ExecutorError::Seccomp(err.to_string()))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, ExecutorError> {
    SeccompRule::new(conditions).map_err(|err| ExecutorError::Seccomp(err.to_string()))
}

fn compile(filter: SeccompFilter) -> Result<BpfProgram, ExecutorError> {
    BpfProgram::try_from(filter).map_err(|err| ExecutorError::Seccomp(err.to_string()))
}

/// The main deny-list (EPERM).
fn deny_filter(arch: TargetArch) -> Result<BpfProgram, ExecutorError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for call in denied_syscalls() {
        rules.insert(call, Vec::new());
    }

    // clone(2) with a namespace flag: the program may fork and start threads, never
    // build namespaces of its own.
    let namespace_flags = [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWCGROUP,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
    ];
    let clone_rules = namespace_flags
        .iter()
        .map(|&flag| {
            let flag = flag as u64;
            rule(vec![condition(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?])
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);

    // socket(2): only AF_UNIX (pipes between the program's own processes); no raw or
    // packet sockets in any domain. The network namespace already has no route
    // anywhere; this is the second wall.
    let socket_type_mask = 0xf_u64;
    rules.insert(
        libc::SYS_socket,
        vec![
            rule(vec![condition(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                libc::AF_UNIX as u64,
            )?])?,
            rule(vec![condition(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(socket_type_mask),
                libc::SOCK_RAW as u64,
            )?])?,
            rule(vec![condition(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(socket_type_mask),
                SOCK_PACKET,
            )?])?,
        ],
    );
    rules.insert(
        libc::SYS_socketpair,
        vec![rule(vec![condition(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Ne,
            libc::AF_UNIX as u64,
        )?])?],
    );

    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(EPERM),
        arch,
    )
    .map_err(|err| ExecutorError::Seccomp(err.to_string()))?;
    compile(filter)
}

/// BPF opcodes and return values for the hand-written prologue.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

fn instruction(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Runs before the seccompiler program (which starts with its own architecture check
/// and reloads the syscall number, so prepending is safe; its jumps are relative):
///
/// - clone3 passes its flags in memory, where BPF cannot look: answer ENOSYS so that
///   libc falls back to clone(2), whose flags the main filter checks;
/// - on x86_64 the x32 ABI reaches the same kernel entry points with syscall numbers
///   offset by 0x4000_0000 under the same audit arch: a number-based deny-list must
///   refuse that whole range or it can be bypassed.
fn prologue() -> BpfProgram {
    let mut program = vec![instruction(BPF_LD_W_ABS, 0, 0, 0)];
    #[cfg(target_arch = "x86_64")]
    program.extend([
        instruction(BPF_JMP_JGE_K, 0, 1, 0x4000_0000),
        instruction(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),
    ]);
    program.extend([
        instruction(BPF_JMP_JEQ_K, 0, 1, libc::SYS_clone3 as u32),
        instruction(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | ENOSYS),
    ]);
    program
}

fn to_bytes(program: &[sock_filter]) -> Vec<u8> {
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

/// The filter to install, as the hex of its raw `sock_filter` array. One program: the
/// kernel JIT-compiles every filter installed, so one costs less than several.
pub fn program_hex() -> Result<String, ExecutorError> {
    let arch = target_arch()?;
    let mut program = prologue();
    program.extend(deny_filter(arch)?);
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
    use super::*;

    #[test]
    fn filter_compiles_to_whole_instructions() {
        let program = program_hex().unwrap();
        // 8 bytes, 16 hex digits per instruction.
        assert_eq!(program.len() % 16, 0);
        assert!(program.len() / 16 > 20);
        // The deny-list compares against ptrace's and clone3's numbers.
        for call in [libc::SYS_ptrace, libc::SYS_clone3] {
            let number = to_hex(&(call as u32).to_ne_bytes());
            assert!(program.contains(&number), "syscall {call} missing");
        }
    }

    #[test]
    fn prologue_jumps_stay_inside_the_prologue() {
        let prologue = prologue();
        for (index, instruction) in prologue.iter().enumerate() {
            let last_target = index + 1 + usize::from(instruction.jt.max(instruction.jf));
            assert!(
                last_target <= prologue.len(),
                "jump out of the prologue at {index}"
            );
        }
        // Falls through to the main program: the last instruction is a return that only
        // the preceding comparison reaches.
        assert_eq!(prologue.last().unwrap().code, BPF_RET_K);
    }
}
