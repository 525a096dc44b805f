#!/usr/bin/env python3
"""Checks for deploy/checks/40-platforms.sh, about the macOS builds and docs (test scaffolding, never shipped).

  macos.py binary FILE ARCH   FILE is a Mach-O 64-bit executable for ARCH (arm64 or x86_64); an arm64 one must carry
                              a code signature (LC_CODE_SIGNATURE): Apple silicon runs no unsigned code, and the
                              linker's ad-hoc signature is what lets a downloaded binary start at all.
  macos.py plist DOC          the launchd plist in DOC (the first ```xml block) parses and runs `fluidity agent`.
Prints what it proved; exits 1 with the reason otherwise.
"""

import plistlib
import re
import struct
import sys

MH_MAGIC_64 = 0xFEEDFACF
MH_EXECUTE = 2
LC_CODE_SIGNATURE = 0x1D
CPU_TYPES = {"arm64": 0x0100000C, "x86_64": 0x01000007}


def fail(reason):
    print(f"macos.py: {reason}", file=sys.stderr)
    sys.exit(1)


def check_binary(path, arch):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 32:
        fail(f"{path}: too short for a Mach-O header")
    magic, cputype, _sub, filetype, ncmds, _size, _flags, _reserved = struct.unpack_from("<IiiIIIII", data, 0)
    if magic != MH_MAGIC_64:
        fail(f"{path}: not a 64-bit little-endian Mach-O file (magic {magic:#x})")
    if cputype != CPU_TYPES[arch]:
        fail(f"{path}: CPU type {cputype:#x}, expected {arch} ({CPU_TYPES[arch]:#x})")
    if filetype != MH_EXECUTE:
        fail(f"{path}: file type {filetype}, expected an executable ({MH_EXECUTE})")
    offset, commands = 32, set()
    for _ in range(ncmds):
        cmd, cmdsize = struct.unpack_from("<II", data, offset)
        commands.add(cmd)
        offset += cmdsize
    signed = LC_CODE_SIGNATURE in commands
    if arch == "arm64" and not signed:
        fail(f"{path}: no code signature; Apple silicon would refuse to run it")
    print(f"{path}: Mach-O {arch} executable, {ncmds} load commands, code signature: {'yes' if signed else 'no'}")


def check_plist(doc):
    with open(doc, encoding="utf-8") as f:
        text = f.read()
    block = re.search(r"```xml\n(.*?)```", text, re.S)
    if not block:
        fail(f"{doc}: no ```xml block")
    try:
        plist = plistlib.loads(block.group(1).encode())
    except Exception as err:  # plistlib raises several types for malformed XML
        fail(f"{doc}: the launchd plist does not parse: {err}")
    args = plist.get("ProgramArguments", [])
    if plist.get("Label") != "dev.fluidity.agent" or args[1:3] != ["agent", "--config"] or not plist.get("RunAtLoad"):
        fail(f"{doc}: the plist must have Label dev.fluidity.agent, run `fluidity agent --config` and RunAtLoad")
    print(f"{doc}: launchd plist parses; {plist['Label']} runs {' '.join(args[1:3])} at load")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "binary" and sys.argv[3] in CPU_TYPES:
        check_binary(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "plist":
        check_plist(sys.argv[2])
    else:
        fail("usage: macos.py binary FILE arm64|x86_64 | macos.py plist DOC")
