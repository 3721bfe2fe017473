"""Reading SASS: instructions, loops and per-instruction execution counts of one kernel.

A loop is a backward branch (BRA to an address at or before its own); its body is every
instruction from the target to the branch. An instruction inside nested loops runs the
product of their trip counts. Trip counts are not in the code: the caller supplies them,
outermost loop first, from the launch's arguments (benchmarks/static_model.py).
"""
import dataclasses
import itertools
import re
import subprocess
import tempfile

from standin_driver import cuobjdump

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")


@dataclasses.dataclass
class Instruction:
    address: int
    text: str

    @property
    def opcode(self) -> str:
        words = self.text.split()
        return words[1] if words[0].startswith("@") else words[0]


def disassemble(cubin: bytes) -> list:
    """The kernel's SASS instructions in address order."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        text = subprocess.run([cuobjdump(), "-sass", handle.name], capture_output=True, text=True,
                              check=True).stdout
    return parse(text)


def parse(text) -> list:
    """The instructions of one kernel's cuobjdump -sass text, in address order, without the idle tail."""
    instructions = [Instruction(int(address, 16), body.strip()) for address, body in _LINE.findall(text)]
    return _without_idle_tail(instructions)


def _without_idle_tail(instructions):
    """Drops what never runs: the idle loop after the last EXIT (a branch to itself) and the NOP
    padding after it."""
    end = len(instructions)
    while end and instructions[end - 1].opcode == "NOP":
        end -= 1
    last = instructions[end - 1] if end else None
    if last is not None and last.opcode == "BRA" and f"0x{last.address:x}" in last.text:
        end -= 1
    return instructions[:end]


def loops(instructions) -> list:
    """(start, end) address ranges of the loops, outermost first, by the backward branches."""
    found = []
    for instruction in instructions:
        if instruction.opcode.startswith("BRA"):
            target = re.search(r"0x([0-9a-f]+)", instruction.text)
            # A branch to itself is the idle loop after EXIT, not a loop of the kernel.
            if target and int(target.group(1), 16) < instruction.address:
                found.append((int(target.group(1), 16), instruction.address))
    return sorted(set(found), key=lambda span: (span[0], -span[1]))


def executions(instructions, trip_counts) -> list:
    """How many times each instruction runs per thread, given the loops' trip counts."""
    spans = loops(instructions)
    if len(trip_counts) != len(spans):
        raise ValueError(f"the kernel has {len(spans)} loops, {len(trip_counts)} trip counts were given")
    counts = []
    for instruction in instructions:
        count = 1
        for (start, end), trips in zip(spans, trip_counts):
            if start <= instruction.address <= end:
                count *= trips
        counts.append(count)
    return counts


def _register(operand) -> str:
    return operand.strip().lstrip("!")


def division_slow_paths(instructions) -> set:
    """Addresses of the code a correctly rounded division runs only off its fast path: ptxas guards each fast
    path with FCHK (inputs or quotient out of the range where it is exact: denormals, infinities, NaN, extreme
    exponents) and branches around a call of the slow-path subroutine. Returns the bodies of those branches (a
    predicated forward branch on FCHK's predicate over a few instructions holding a CALL) and the subroutines
    only they call (CALL target to its RET)."""
    slow, guarded_targets, other_targets = set(), set(), set()
    fchk_predicates = set()  # predicates FCHK set and nothing has written since
    for index, instruction in enumerate(instructions):
        words = instruction.text.replace(",", " ").split()
        if instruction.opcode.startswith("FCHK"):
            fchk_predicates.add(words[1])
            continue
        guarded = words[0].startswith("@") and _register(words[0][1:]) in fchk_predicates
        if instruction.opcode == "BRA" and guarded:
            target = int(words[-1], 16)
            body = list(itertools.takewhile(lambda i: i.address < target, instructions[index + 1:]))
            if target > instruction.address and len(body) <= 8 and any(i.opcode.startswith("CALL") for i in body):
                slow.update(i.address for i in body)
                guarded_targets.update(int(i.text.split()[-1], 16) for i in body if i.opcode.startswith("CALL"))
                continue
        if instruction.opcode.startswith("CALL") and instruction.address not in slow:
            other_targets.add(int(words[-1], 16))
        # Any other write of a predicate ends FCHK's claim on it.
        for operand in words[1:3]:
            if operand.startswith("P") and operand[1:].isdigit():
                fchk_predicates.discard(operand)
    for target in guarded_targets - other_targets:
        for instruction in instructions:
            if instruction.address >= target:
                slow.add(instruction.address)
                if instruction.opcode.startswith("RET"):
                    break
    return slow


_BRANCHES = ("BRA", "EXIT", "RET", "CALL", "BRX", "JMP")


def basic_blocks(instructions) -> list:
    """The straight runs of code, as lists of instructions in address order: a run starts at the first
    instruction, at a branch's target and after a branch, EXIT, call or return, so that control enters it only
    at its first instruction and every instruction of it runs as often as that one."""
    leaders = {instructions[0].address} if instructions else set()
    for index, instruction in enumerate(instructions):
        if instruction.opcode.startswith(_BRANCHES):
            target = re.search(r"0x([0-9a-f]+)\s*$", instruction.text)
            if target and not instruction.opcode.startswith(("EXIT", "RET")):
                leaders.add(int(target.group(1), 16))
            if index + 1 < len(instructions):
                leaders.add(instructions[index + 1].address)
    blocks = []
    for instruction in instructions:
        if instruction.address in leaders or not blocks:
            blocks.append([])
        blocks[-1].append(instruction)
    return blocks


def global_access_bits(instruction) -> int:
    """Width in bits of a global load or store (LDG/STG), 0 for anything else."""
    opcode = instruction.opcode
    if not opcode.startswith(("LDG", "STG")):
        return 0
    width = re.search(r"\.(U8|S8|U16|S16|32|64|128)\b", opcode)
    return {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128}.get(width.group(1), 32) if width else 32
