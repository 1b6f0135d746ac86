#!/usr/bin/env python3
"""Run a command under a seccomp filter, as a container runtime would (Python 3 standard
library only; x86_64 and aarch64).

    seccomp_exec.py --deny NR[,NR...] -- COMMAND...   # those syscalls fail with EPERM
    seccomp_exec.py --profile FILE -- COMMAND...      # a Docker seccomp profile (JSON)

The tests use it to start the relay where io_uring_setup is refused (what Docker's default
profile does) and under deploy/docker/seccomp.json. A profile may use defaultAction and
syscalls[].action SCMP_ACT_ALLOW or SCMP_ACT_ERRNO (errnoRet / defaultErrnoRet), without
argument conditions; names the running architecture lacks are skipped, as Docker does.
"""
import ctypes
import json
import os
import platform
import re
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
RET_KILL_PROCESS = 0x80000000
LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
RET_K = 0x06  # BPF_RET | BPF_K
EPERM = 1

# (AUDIT_ARCH_*, header with this architecture's syscall numbers)
ARCHES = {
    "x86_64": (0xC000003E, "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
    "aarch64": (0xC00000B7, "/usr/include/asm-generic/unistd.h"),
}


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]


def syscall_numbers(header):
    """name -> number from the kernel headers (linux-libc-dev)."""
    defs = {}
    with open(header) as f:
        for m in re.finditer(r"^#define\s+__NR(?:3264)?_(\w+)\s+(\w+)", f.read(), re.M):
            defs[m.group(1)] = m.group(2)
    out = {}
    for name, value in defs.items():
        for _ in range(3):  # aarch64 aliases: __NR_fcntl -> __NR3264_fcntl -> 25
            if value.isdigit():
                out[name] = int(value)
                break
            value = defs.get(re.sub(r"^__NR(3264)?_", "", value), "")
    return out


def action(name, errno):
    if name == "SCMP_ACT_ALLOW":
        return RET_ALLOW
    if name == "SCMP_ACT_ERRNO":
        return RET_ERRNO | (errno & 0xFFFF)
    sys.exit(f"seccomp_exec: unsupported action {name}")


def program(arch, default, rules):
    """rules: [(number, return value)]; anything else gets `default`."""
    insns = [
        (LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (JEQ_K, 1, 0, arch),
        (RET_K, 0, 0, RET_KILL_PROCESS),  # another ABI: never expected here
        (LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    for nr, ret in rules:
        insns += [(JEQ_K, 0, 1, nr), (RET_K, 0, 0, ret)]
    insns.append((RET_K, 0, 0, default))
    return insns


def main():
    args = sys.argv[1:]
    if "--" not in args or len(args) < 4:
        sys.exit(__doc__)
    sep = args.index("--")
    opts, command = args[:sep], args[sep + 1:]
    arch, header = ARCHES.get(platform.machine(), (None, None))
    if arch is None:
        sys.exit(f"seccomp_exec: unsupported architecture {platform.machine()}")
    if opts[0] == "--deny":
        rules = [(int(n), RET_ERRNO | EPERM) for n in opts[1].split(",")]
        default = RET_ALLOW
    elif opts[0] == "--profile":
        with open(opts[1]) as f:
            profile = json.load(f)
        numbers = syscall_numbers(header)
        default = action(profile["defaultAction"], profile.get("defaultErrnoRet", EPERM))
        rules, seen = [], set()
        for rule in profile["syscalls"]:
            if rule.get("args") or rule.get("includes") or rule.get("excludes"):
                sys.exit("seccomp_exec: argument conditions are not supported")
            ret = action(rule["action"], rule.get("errnoRet", EPERM))
            for name in rule["names"]:
                if name in numbers and name not in seen:
                    seen.add(name)
                    rules.append((numbers[name], ret))
    else:
        sys.exit(__doc__)
    insns = program(arch, default, rules)
    filters = (SockFilter * len(insns))(*[SockFilter(*i) for i in insns])
    prog = SockFprog(len(insns), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        sys.exit(f"seccomp_exec: PR_SET_NO_NEW_PRIVS: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        sys.exit(f"seccomp_exec: PR_SET_SECCOMP: {os.strerror(ctypes.get_errno())}")
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
