"""A static performance model of every Triton kernel, from the code the GPU would run. No GPU needed.

    python benchmarks/static_model.py [--quick] [--csv PATH]

Each case calls the public API at a benchmark shape under the stand-in driver
(benchmarks/standin_driver.py), so the grids and specialisations are the real ones and
Triton compiles the real sm_90 SASS. For each launch it reads, from that SASS and the
cubin's resource usage: registers, spills, shared memory, the widest global load and
store, and the instructions each thread executes (loop bodies times their trip counts,
which are constexprs: KERNEL_LOOPS says which). From these, per case and GPU:

- memory time   = the case's DRAM bytes / the measured copy bandwidth;
- issue time    = executed warp instructions / (SMs x 4 schedulers x clock);
- latency time  = DRAM bytes / (bytes in flight per SM x SMs / DRAM latency): Little's law,
  with the loads one CTA has outstanding at once (its whole body, or one loop iteration)
  times the CTAs resident per SM;
- predicted time = the largest of the three, which names the bound, and % of copy =
  memory time / predicted time.

Residency rule (cross-entropy): a row held in registers reads nothing again; the split kernel's
sweep 2 reads every chunk again, from L2, not DRAM, only while what moves through L2 between a
chunk's two sweeps (2 x split_lag rows) fits in L2_RESIDENT_FRACTION (two thirds) of it; otherwise
every byte read again counts as DRAM traffic. Each kernel's share of the case's DRAM bytes, for Little's
law, is the share of the loads it executes. A trip-count hook may say where a program ends (the backward
scaling's EXIT when grad_output = 1).

It is a model: it ignores divergence, bank conflicts, tail effects, launch gaps between dependent
kernels and cache behaviour beyond the residency rule above. A correctly rounded division's slow path
(ptxas's FCHK-guarded call, for denormal, infinite or extreme operands) counts as never taken
(sass.division_slow_paths). It counts loads in a loop body as in
flight together, whatever order ptxas gives them. Real GPU runs remain the truth
(benchmarks/results/results.csv); where they disagree, the model is what changes.
"""
import argparse
import dataclasses
import importlib
import json
import math
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# This checkout's package, not whichever one is installed.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import recipe_kernels as rk  # noqa: E402
import sass  # noqa: E402
from common import write_table  # noqa: E402
from standin_driver import StandInDriver  # noqa: E402

STATIC_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "static.csv")


@dataclasses.dataclass(frozen=True)
class Gpu:
    name: str
    sm_count: int
    copy_bandwidth: float  # bytes/s, device-to-device copy measured on that GPU (docs/benchmark-method)
    clock_hz: float        # sustained SM clock under load
    dram_latency_s: float  # loaded DRAM latency, for Little's law
    l2_bytes: int


GPUS = [
    Gpu("H100", 132, 3.0e12, 1.755e9, 700e-9, 50 << 20),
    Gpu("H200", 132, 4.3e12, 1.755e9, 700e-9, 50 << 20),
]
ISSUE_PER_SM_PER_CLOCK = 4  # four warp schedulers, one instruction each per clock
MAX_THREADS_PER_SM, MAX_CTAS_PER_SM, REGISTERS_PER_SM = 2048, 32, 65536
SHARED_PER_SM = 228 << 10
REGISTER_ALLOCATION_UNIT = 256  # registers are allocated per warp in units of 256

# Trip counts of each kernel's loops, outermost first, from its constexprs (and launch arguments).
KERNEL_LOOPS = {
    "_dropout_bias_backward_kernel": lambda k: [k["ROWS_PER_PROGRAM"] // k["ROWS_IN_FLIGHT"]],
    # planes, then column blocks, per program (a loop of one trip is no loop)
    "_composite_kernel": lambda k: [trips for trips in (k["PLANE_STEPS"], k["COLUMN_STEPS"]) if trips > 1],
}
# What fits in L2 between a chunk's two sweeps: cross-entropy's split kernel reads a chunk again from L2 only
# while what moves through L2 in between takes at most this share of it (the kernel's own bound,
# recipe_kernels.cross_entropy.L2_RESIDENT_FRACTION). The rest is left to the lines marked evict_first
# (what sweep 2 reads again, the gradient it writes).
CROSS_ENTROPY = importlib.import_module("recipe_kernels.cross_entropy")
L2_RESIDENT_FRACTION = CROSS_ENTROPY.L2_RESIDENT_FRACTION


@dataclasses.dataclass
class KernelFigures:
    """What one launch's compiled code says."""
    name: str
    ctas: int
    warps: int
    registers: int
    spills: int
    shared: int
    widest_load_bits: int
    widest_store_bits: int
    warp_instructions: float    # executed, whole launch
    barriers: float             # executed per CTA
    shuffles: float
    mufu: float
    bytes_in_flight_per_cta: int
    known_trip_counts: bool
    constexprs: dict = dataclasses.field(default_factory=dict)
    executed_load_bytes: float = 0.0  # whole launch, for each kernel's share of the case's DRAM bytes
    persistent: bool = False  # programs loop over the work (grid-stride or persistent grid)

    def resident_ctas_per_sm(self) -> int:
        threads = self.warps * 32
        registers_per_warp = math.ceil(max(self.registers, 1) * 32 / REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
        limits = [MAX_CTAS_PER_SM, MAX_THREADS_PER_SM // threads, REGISTERS_PER_SM // (registers_per_warp * self.warps)]
        if self.shared:
            limits.append(SHARED_PER_SM // (self.shared + 1024))
        return max(1, min(limits))


def _constexprs(kernel):
    names = kernel.src.fn.arg_names
    return {names[key[0] if isinstance(key, tuple) else key]: value for key, value in kernel.src.constants.items()}


def figures(launch, trip_counts=None) -> KernelFigures:
    """trip_counts: the loops' trip counts when launch arguments, not constexprs, set them (Case.trip_counts)."""
    instructions = sass.disassemble(launch.kernel.asm["cubin"])
    loop_spans = sass.loops(instructions)
    if callable(trip_counts):  # from the code itself: trip_counts(constexprs, launch, instructions, spans)
        trips_of = lambda k: trip_counts(k, launch, instructions, loop_spans)  # noqa: E731
    else:
        trips_of = (lambda k: trip_counts) if trip_counts is not None else KERNEL_LOOPS.get(launch.name)
    known = True
    try:
        trips = trips_of(_constexprs(launch.kernel)) if trips_of else [1] * len(loop_spans)
        # A hook may also say where the program ends ("ends_at": the address of the EXIT taken), which
        # instructions run only a share of their loop's trips ("shares": [(first, last address, share)]) and
        # the load bytes a thread has in flight at once ("in_flight_bytes").
        hook = trips if isinstance(trips, dict) else {}
        ends_at, persistent = hook.get("ends_at"), bool(hook.get("persistent"))
        trips = hook.get("trips", trips)
        counts = sass.executions(instructions, trips)
        if ends_at is not None:
            counts = [c if i.address <= ends_at else 0 for i, c in zip(instructions, counts)]
        for first, last, share in hook.get("shares", []):
            counts = [c * share if first <= i.address <= last else c for i, c in zip(instructions, counts)]
        slow = sass.division_slow_paths(instructions)  # never taken for the cases' operands
        counts = [0 if i.address in slow else c for i, c in zip(instructions, counts)]
        known = trips_of is not None or not loop_spans
    except (ValueError, KeyError):
        counts, known, persistent, hook = [1] * len(instructions), False, False, {}
    per_thread = sum(counts)

    def executed(prefix):
        return sum(c for i, c in zip(instructions, counts) if i.opcode.startswith(prefix))

    innermost = loop_spans[-1] if loop_spans else None
    threads = launch.num_warps * 32
    load_bytes = hook.get("in_flight_bytes") or sum(
        sass.global_access_bits(i) // 8 for i in instructions
        if i.opcode.startswith("LDG") and (innermost is None or innermost[0] <= i.address <= innermost[1]))
    return KernelFigures(
        name=launch.name, ctas=launch.ctas, warps=launch.num_warps, registers=launch.kernel.n_regs,
        spills=launch.kernel.n_spills, shared=launch.kernel.metadata.shared,
        widest_load_bits=max([sass.global_access_bits(i) for i in instructions if i.opcode.startswith("LDG")],
                             default=0),
        widest_store_bits=max([sass.global_access_bits(i) for i in instructions if i.opcode.startswith("STG")],
                              default=0),
        warp_instructions=per_thread * launch.num_warps * launch.ctas,
        barriers=executed("BAR") * launch.num_warps, shuffles=executed("SHFL") * launch.num_warps,
        mufu=executed("MUFU") * launch.num_warps, bytes_in_flight_per_cta=load_bytes * threads,
        known_trip_counts=known, constexprs=_constexprs(launch.kernel), persistent=persistent,
        executed_load_bytes=threads * launch.ctas * sum(sass.global_access_bits(i) // 8 * c
                                                        for i, c in zip(instructions, counts)
                                                        if i.opcode.startswith("LDG")))


@dataclasses.dataclass
class Case:
    """One benchmarked call: `run` makes the launches, over `elements` useful elements moving
    `minimal_bytes`; `dram_bytes(kernels, gpu)` refines that where the code re-reads (default: minimal);
    `trip_counts` maps a kernel's name to its loops' trip counts where runtime values set them."""
    name: str
    run: object
    elements: int
    minimal_bytes: int
    dram_bytes: object = None
    trip_counts: dict = None


def predict(case, kernels, gpu):
    dram = case.dram_bytes(kernels, gpu) if case.dram_bytes else case.minimal_bytes
    memory_s = dram / gpu.copy_bandwidth
    issue_s = latency_s = 0.0
    for kernel in kernels:
        sms = min(gpu.sm_count, kernel.ctas)
        issue_s += kernel.warp_instructions / (sms * ISSUE_PER_SM_PER_CLOCK * gpu.clock_hz)
        resident = min(kernel.resident_ctas_per_sm(), math.ceil(kernel.ctas / gpu.sm_count))
        in_flight = resident * kernel.bytes_in_flight_per_cta * sms
        if in_flight:
            # Each kernel waits on its share of the DRAM bytes: the share of the loads it executes.
            share = kernel.executed_load_bytes / max(1.0, sum(k.executed_load_bytes for k in kernels))
            latency_s += dram * share * gpu.dram_latency_s / in_flight
    times = {"memory": memory_s, "issue": issue_s, "latency": latency_s}
    bound = max(times, key=times.get)
    minimal_s = case.minimal_bytes / gpu.copy_bandwidth
    return {"gpu": gpu.name, "dram_bytes_per_element": dram / case.elements, "bound": bound,
            "issue_share": issue_s / memory_s, "latency_share": latency_s / memory_s,
            "bytes_in_flight_per_sm": max((min(k.resident_ctas_per_sm(), math.ceil(k.ctas / gpu.sm_count))
                                           * k.bytes_in_flight_per_cta for k in kernels), default=0),
            "little_need_per_sm": gpu.copy_bandwidth * gpu.dram_latency_s / gpu.sm_count,
            "pct_copy": 100.0 * minimal_s / max(times.values())}


# ----------------------------------------------------------------------------- cases

def _bf16(*shape, requires_grad=False):
    return torch.empty(shape, dtype=torch.bfloat16).normal_().requires_grad_(requires_grad) if math.prod(shape) < (1 << 24) \
        else torch.empty(shape, dtype=torch.bfloat16, requires_grad=requires_grad)


def _ce_dram_bytes(rows, classes, itemsize):
    """DRAM bytes of cross-entropy fwd+bwd: one read of the logits, one write of the gradient, 12 bytes per
    row (target, loss). A row held in registers (_cross_entropy_fwd_kernel) reads nothing again. The split
    kernel's sweep 2 reads every chunk again: from L2 while what moves through it between a chunk's two
    sweeps (2 x split_lag rows: read by sweep 1, and gradient written) fits in L2_RESIDENT_FRACTION of L2,
    else from DRAM."""
    def dram(kernels, gpu):
        minimal = rows * classes * itemsize * 2 + rows * 12
        split = next((k for k in kernels if k.name == "_cross_entropy_split_kernel"), None)
        if split is None:
            return minimal
        chunk = split.constexprs["BLOCK"] * split.constexprs["BLOCKS_PER_CHUNK"]
        lag = CROSS_ENTROPY.split_lag(split.ctas, math.ceil(classes / chunk))
        from_l2 = 2 * lag * classes * itemsize <= L2_RESIDENT_FRACTION * gpu.l2_bytes
        return minimal + (0 if from_l2 else rows * classes * itemsize)
    return dram


def _ce_loops(rows, classes, itemsize):
    """Trip counts of the cross-entropy kernels' loops, each loop known by what it does:
    - _cross_entropy_fwd_kernel's persistent loop over rows: rows / programs;
    - the split kernel's count of the `mean` denominator's targets, before its items: rows / PARTIALS_BLOCK;
      its loops over the queue's grabs and over the items of a grab (ITEMS_PER_GRAB), holding sweep 1, the
      merge and sweep 2: one item trip per chunk and program counts one item of each sweep, the merge counted
      once per row (a share of the trips); its wait for a merged row (a loop of acquire loads only): none,
      the lag makes it rare; in flight, one block of one sweep;
    - a chunk's blocks: loads marked evict_last, all but the last block; evict_first, every block;
    - a loop that only stores (the zeros of ignored rows): none here.
    The backward scaling ends at its first EXIT (the benchmark's grad_output is 1: each program loads the
    factor and ends)."""
    def trips(k, launch, instructions, spans):
        if launch.name == "_scale_gradient_kernel":  # grad_output = 1: the first EXIT, right after the factor
            return {"trips": [0] * len(spans), "ends_at": next(i.address for i in instructions if i.opcode == "EXIT"),
                    "persistent": True}
        if launch.name == "_index_denominator_kernel":  # rows_per_program / BLOCK
            return [math.ceil(math.ceil(rows / launch.grid[0]) / k["BLOCK"])] * len(spans)
        result = []
        for number, (start, end) in enumerate(spans):
            own = [i for i in instructions if start <= i.address <= end
                   and not any(s <= i.address <= e for s, e in spans if (s, e) != (start, end) and start <= s
                               and e <= end)]
            loads = [i.opcode for i in own if i.opcode.startswith("LDG")]
            items = launch.name == "_cross_entropy_split_kernel" and any(
                i.opcode.startswith("REDG") and start <= i.address <= end for i in instructions)
            if number == 0 and launch.name == "_cross_entropy_fwd_kernel":
                result.append(math.ceil(rows / launch.grid[0]))
            elif launch.name == "_cross_entropy_split_kernel" and start < min(s for s, _ in spans if s != start) \
                    and not items:  # the prologue's count of the targets, before the items
                result.append(math.ceil(rows / k["PARTIALS_BLOCK"]))
            elif items and any(s < start and end < e for s, e in spans):  # the items of one grab
                result.append(CROSS_ENTROPY.ITEMS_PER_GRAB.value)
            elif items:  # the grabs
                chunk = k["BLOCK"] * k["BLOCKS_PER_CHUNK"]
                result.append(rows * math.ceil(classes / chunk) / launch.grid[0] / CROSS_ENTROPY.ITEMS_PER_GRAB.value)
            elif loads and all(".STRONG" in opcode for opcode in loads):
                result.append(0)
            elif any(".EL" in opcode for opcode in loads):
                result.append(k["BLOCKS_PER_CHUNK"] - 1)
            elif any(".EF" in opcode for opcode in loads):
                result.append(k["BLOCKS_PER_CHUNK"])
            elif not loads:
                result.append(0)
            else:
                raise ValueError(f"a loop of {launch.name} that the model does not know")
        if launch.name != "_cross_entropy_split_kernel":
            return {"trips": result, "persistent": launch.grid[0] < rows}
        # The merge, once per row, not per chunk: from the arrival (the atomic add before the release) to the
        # release (the one reduction, an add whose result is unused).
        release = next(i.address for i in instructions if i.opcode.startswith("REDG.E.ADD"))
        arrival = max(i.address for i in instructions if i.opcode.startswith("ATOMG.E.ADD") and i.address < release)
        return {"trips": result, "persistent": True,
                "in_flight_bytes": k["BLOCK"] * itemsize // (32 * launch.num_warps),
                "shares": [(arrival + 1, release, k["BLOCK"] * k["BLOCKS_PER_CHUNK"] / classes)]}
    return trips


CE_KERNELS = ("_cross_entropy_fwd_kernel", "_cross_entropy_split_kernel", "_scale_gradient_kernel",
              "_index_denominator_kernel")


def _filter_windows(box_lengths, out_length, antialias):
    """Per sample and output index, (first, count) of its window, in augment._filter_window's fp32 arithmetic."""
    box = box_lengths.to(torch.float32)[:, None]
    scale = box / out_length
    support = torch.clamp(scale, min=1.0) if antialias else torch.ones_like(scale)
    centre = scale * (torch.arange(out_length, dtype=torch.float32) + 0.5)
    first = torch.clamp((centre - support + 0.5).to(torch.int32), min=0)
    count = torch.minimum((centre + support + 0.5).to(torch.int32), box_lengths[:, None].to(torch.int32)) - first
    return first, count


def _tile_taps(box_lengths, out_length, antialias, block):
    """(samples, tiles): per tile of `block` output indices, the largest window count (the Triton kernel's
    tap-loop trip count, augment._filter_window), in its fp32 arithmetic."""
    _, count = _filter_windows(box_lengths, out_length, antialias)
    padded = torch.nn.functional.pad(count, (0, -out_length % block))
    return padded.reshape(len(box_lengths), -1, block).amax(-1)


def _strip_loops(box_heights, box_widths, box_lefts, image_width, out_height, out_width):
    """Trip counts and branch shares of augment._resized_crop_strip_kernel (one strip per sample: out_width <=
    STRIP_X), from the workload's windows, in SASS order:
    - the column window totals (_inverse_window_total over the strip's taps_x);
    - per program the output rows of its segment, holding: a row window's total (a loop unrolled by 4 and its
      remainder, count // 4 and count % 4 trips), and the advance loop (the source rows computed, WINDOW at a
      segment's start and then first(i) - first(i - 1) per output row, per output row of the segment); in the advance
      loop the column slots past ANTIALIAS_COLUMN_SLOTS, run where the strip's slot_reach reaches them (nested
      branches: a share each, the inner one given the outer); after it the vertical taps, slot s where s < count(i)
      (nested branches likewise);
    - the single-pass fallback's loops (rows, their window totals, the row taps, the column taps past the first
      slots): no trips, as no program of the workload falls back (the hook refuses a workload where one does)."""
    from recipe_kernels import augment
    first_y, count_y = _filter_windows(box_heights, out_height, True)
    first_x, count_x = _filter_windows(box_widths, out_width, True)
    window, slots = augment.WINDOW, augment.STRIP_COLUMN_SLOTS
    taps_x = count_x.amax(1)  # one strip per sample
    first_col = box_lefts[:, None] + first_x
    start_col = first_col.clamp(min=0, max=image_width - slots)
    reach = ((first_col + count_x).clamp(max=image_width) - start_col).amax(1)
    n = len(box_heights)

    def trips(k, launch, instructions, spans):
        segments, segment_rows = launch.grid[1], math.ceil(out_height / launch.grid[1])
        assert launch.grid[2] == 1 and out_height % segment_rows == 0, "the hook counts whole segments of one strip"
        by_segment = count_y.reshape(n, segments, segment_rows)
        if (by_segment.amax(-1) > window).any() or (reach > slots).any():
            raise ValueError("a program of the workload runs the single-pass fallback")
        firsts = first_y.reshape(n, segments, segment_rows)
        advances = (window + firsts[..., -1] - firsts[..., 0]).double()  # per program
        # per program weight: every program runs segment_rows rows
        row_trips = [float((count_y // 4).double().mean()), float((count_y % 4).double().mean())]
        advance_trips = float(advances.mean()) / segment_rows
        if len(spans) != 11:
            raise ValueError(f"_resized_crop_strip_kernel: 11 loops expected, {len(spans)} found")
        column_totals, rows, *_ = spans
        result = [float(taps_x.double().mean()), segment_rows, *row_trips, advance_trips] + [0] * 6
        advance = spans[4]
        shares = []
        per_advance = advances.sum(1)  # per sample
        # the advance loop's nested branches over column slots ANTIALIAS_COLUMN_SLOTS .. slots - 1
        inner = [i for i in instructions if advance[0] <= i.address <= advance[1]]
        branches = [i for i in inner if i.opcode == "BRA" and i.text.startswith("@")
                    and int(i.text.split("0x")[-1], 16) <= advance[1]
                    and int(i.text.split("0x")[-1], 16) > i.address]
        runs = [float((per_advance * (reach > slot)).sum() / per_advance.sum())
                for slot in range(augment.ANTIALIAS_COLUMN_SLOTS.value - 1, slots)]
        if len(branches) != slots - augment.ANTIALIAS_COLUMN_SLOTS.value:
            raise ValueError("the advance loop's column-slot branches are not where the hook expects them")
        for number, branch in enumerate(branches):
            shares.append((branch.address + 1, int(branch.text.split("0x")[-1], 16) - 1,
                           runs[number + 1] / max(runs[number], 1e-30)))
        # the vertical taps after the advance loop: nested branches skipping to one end
        after = [i for i in instructions if advance[1] < i.address <= rows[1] and i.opcode == "BRA"
                 and i.text.startswith("@")]
        targets = [int(i.text.split("0x")[-1], 16) for i in after]
        end = max(set(targets), key=targets.count)
        vertical = [i for i, target in zip(after, targets) if target == end]
        if len(vertical) != window:
            raise ValueError("the vertical taps' branches are not where the hook expects them")
        runs = [1.0] + [float((count_y > slot).double().mean()) for slot in range(window)]
        for slot, branch in enumerate(vertical):
            shares.append((branch.address + 1, end - 1, runs[slot + 1] / max(runs[slot], 1e-30)))
        # In flight per thread: the advance loop's loads outside its branches (one byte each).
        in_flight = sum(1 for i in inner if i.opcode.startswith("LDG") and not any(
            first <= i.address <= last for first, last, _ in shares))
        return {"trips": result, "shares": shares, "in_flight_bytes": in_flight}
    return trips


def _augment_workload(quick):
    """Issue 14's workload: n uint8 3 x 480 x 480 images -> 224 x 224 normalised bf16, ImageNet's mean and std
    (in byte units). Returns (n, channels, side, size, mean, std, elements, source_bytes), source_bytes(boxes)
    being (n,) the bytes of each crop's source pixels inside its image (C bytes a pixel)."""
    n, channels, side, size = (32 if quick else 256), 3, 480, 224
    mean, std = (0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)

    def source_bytes(boxes):
        top, left, height, width = boxes.unbind(-1)
        inside = (torch.minimum(top + height, torch.tensor(side)) - top.clamp(min=0)).clamp(min=0) * \
            (torch.minimum(left + width, torch.tensor(side)) - left.clamp(min=0)).clamp(min=0)
        return channels * inside.double()
    return n, channels, side, size, mean, std, n * channels * size * size, source_bytes


def _tile_loop_trips(box_heights, box_widths, out_height, out_width, weights=None):
    """The trip counts of augment._resized_tile's loops with antialias, in SASS order (each window total as a
    loop unrolled by 4 and its remainder, rows then columns; then the row taps around the column taps past
    ANTIALIAS_COLUMN_SLOTS), as means over (sample, tile) weighted by `weights` (n, row blocks, column blocks),
    or over every tile."""
    from recipe_kernels import augment
    taps_y = _tile_taps(box_heights, out_height, True, augment.BLOCK_Y)[:, :, None]
    taps_x = _tile_taps(box_widths, out_width, True, augment.BLOCK_X)[:, None, :]
    tail_x = (taps_x - augment.ANTIALIAS_COLUMN_SLOTS.value).clamp(min=0)
    weights = torch.ones(taps_y.shape[0], taps_y.shape[1], taps_x.shape[2], dtype=torch.float64) \
        if weights is None else weights.double()
    mean = lambda value: float((value * weights).sum() / weights.sum().clamp(min=1e-30))  # noqa: E731
    ty, tx, ty_tail = mean(taps_y), mean(taps_x), mean(taps_y * tail_x)
    return [ty / 4, ty % 4, tx / 4, tx % 4, ty, ty_tail / ty]


def _augment_cases(quick):
    """resized_crop over the workload (_augment_workload), flipped, random crops (RandomResizedCrop's defaults),
    antialias off and on. Bytes, as the issue counts them (the bytes the kernel must touch): each crop's source
    pixels inside its image read once, plus the output written once (2 bytes an element); about 4.2 bytes per
    output element at these boxes. Re-reads of a tile's halo and the source pixels a downscale skips are not
    counted."""
    from recipe_kernels import augment
    n, channels, side, size, mean, std, elements, source_bytes = _augment_workload(quick)
    sizes = torch.tensor([[side, side]]).expand(n, 2)
    boxes, flip = augment.sample_crops(torch.tensor([14]), sizes, (0.08, 1.0), (3 / 4, 4 / 3), 0.5)
    top, left, height, width = boxes.unbind(-1)
    minimal = int(source_bytes(boxes).sum()) + 2 * elements
    result = []
    for antialias in (False, True):
        def crop(antialias=antialias):
            images = torch.empty((n, channels, side, side), dtype=torch.uint8)
            rk.resized_crop(images, boxes, size, flip=flip, antialias=antialias, mean=mean, std=std,
                            out_dtype=torch.bfloat16, backend="triton")
        # Bilinear taps are unrolled: no loops.
        trips = _tile_loop_trips(height, width, size, size) if antialias else []
        result.append(Case(f"resized_crop uint8->bf16 norm {'antialias' if antialias else 'bilinear'} "
                           f"{n}x3x480x480->224", crop, elements, minimal,
                           trip_counts={"_resized_crop_kernel": trips,
                                        "_resized_crop_strip_kernel": _strip_loops(height, width, left, side,
                                                                                   size, size)}))
    return result


BATCH_AUGMENT_SEED = 14


# A mode's body in _composite_and_store holds a multiply (MixUp) or a select (CutMix, or a kept sample) per value of
# the tile, at least this many; no other straight run of the kernel holds as many of either.
MODE_BODY_MIN_VALUES = 16


def _batch_augment_regions(instructions):
    """(skip exit, (first, last) of the partner's crop, pair exit, mode bodies) in _batch_augment_kernel's SASS: the
    program of the higher of two mutual partners exits first; the partner's crop is the conditional forward branch
    that skips the most global loads (its pixel gathers); the program of an unpaired sample exits after its own
    output, before the paired partner's (later exits skip the stores of absent channels). Mode bodies maps
    (output, mode), output "own" or "partner" (before or after the pair exit), mode MIXUP or CUTMIX, to the
    (first, last) of the straight run that composites it: MixUp's with a multiply per value, the selects (CutMix,
    or any other mode) with a select."""
    exits = [i.address for i in instructions if i.opcode == "EXIT" and i.text.startswith("@")]
    branches = []
    for branch in instructions:
        if branch.opcode == "BRA" and branch.text.startswith("@"):
            target = int(branch.text.split("0x")[-1], 16)
            if target > branch.address:
                loads = sum(1 for i in instructions
                            if branch.address < i.address < target and i.opcode.startswith("LDG"))
                branches.append((loads, branch.address + 1, target - 1))
    _, first, last = max(branches)
    after = [address for address in exits if address > last]
    if not exits or not exits[0] < first or not after:
        raise ValueError("_batch_augment_kernel's exits and partner branch are not where the hook expects them")
    pair_exit = after[0]
    bodies = {}
    for block in sass.basic_blocks(instructions):
        opcodes = [i.opcode.split(".")[0] for i in block]
        for mode, opcode in ((rk.MixMode.MIXUP, "FMUL"), (rk.MixMode.CUTMIX, "FSEL")):
            if opcodes.count(opcode) >= MODE_BODY_MIN_VALUES:
                key = ("own" if block[0].address < pair_exit else "partner", mode)
                if key in bodies:
                    raise ValueError(f"_batch_augment_kernel has two bodies for {key}")
                bodies[key] = (block[0].address, block[-1].address)
    if len(bodies) != 4:
        raise ValueError(f"_batch_augment_kernel's mode bodies are not where the hook expects them: {sorted(bodies)}")
    return exits[0], (first, last), pair_exit, bodies


def _batch_augment_cases(quick):
    """nn.BatchAugment's compositing launch (augment._batch_augment_kernel) over the workload
    (_augment_workload), its defaults (MixUp 0.8 / CutMix 1.0 per sample, switch 0.5, flip partners), antialias
    off and on. The modes, boxes and crops are those the launch's seed draws (the torch backend's sampling, bit
    for bit the kernel's). Minimal bytes as resized_crop's: each crop's source pixels once, plus the output.
    Programs, per tile: the higher of two mutual partners exits at once; the lower interpolates both crops and
    writes both outputs; any other sample interpolates its partner's crop again where the tile takes it (MixUp,
    or a CutMix box touching the tile), which adds that share of the partner's source bytes to the DRAM bytes.
    Each output runs one composite body, MixUp's blend or the selects, by its sample's mode."""
    from recipe_kernels import augment, mixing
    from recipe_kernels._philox import draw_seed
    n, channels, side, size, mean, std, elements, source_bytes = _augment_workload(quick)
    seed = draw_seed(torch.device("cpu"), torch.Generator().manual_seed(BATCH_AUGMENT_SEED))
    crop, _ = augment.sample_crops(seed, torch.tensor([[side, side]]).expand(n, 2), (0.08, 1.0), (3 / 4, 4 / 3), 0.5)
    _, box, mode = mixing._sample_mixing(seed + 1, n, size, size, cutmix_alpha=1.0, mixup_alpha=0.8, switch_prob=0.5,
                                         prob=1.0, correct_lam=True, backend="torch")
    partner = mixing._partner_index(n, "flip", torch.device("cpu")).long()
    samples = torch.arange(n)
    paired = (partner[partner] == samples) & (partner != samples)
    working = ~(paired & (partner < samples))
    tiles_y, tiles_x = math.ceil(size / augment.BLOCK_Y), math.ceil(size / augment.BLOCK_X)
    tile_y0 = (torch.arange(tiles_y) * augment.BLOCK_Y)[None, :, None]
    tile_x0 = (torch.arange(tiles_x) * augment.BLOCK_X)[None, None, :]
    x0, y0, x1, y1 = (box[:, k, None, None] for k in range(4))
    touches = (y0 < tile_y0 + augment.BLOCK_Y) & (y1 > tile_y0) & (x0 < tile_x0 + augment.BLOCK_X) & (x1 > tile_x0)
    mode = mode[:, None, None]
    takes = (mode == mixing.MixMode.MIXUP) | ((mode == mixing.MixMode.CUTMIX) & touches)
    interpolates_partner = (paired[:, None, None] | takes) & working[:, None, None]
    working_tiles = working[:, None, None].expand_as(takes)
    work_share = float(working.double().mean())
    partner_share = float(interpolates_partner.double().sum() / working_tiles.double().sum())
    pair_share = float((paired & working).double().sum() / working.double().sum())
    # Each output's composite runs MixUp's body or else CutMix's selects: shares of the working programs' own
    # samples, and of the partners they write.
    blends = (mode == mixing.MixMode.MIXUP).flatten()
    runs = {mixing.MixMode.MIXUP: blends, mixing.MixMode.CUTMIX: ~blends}
    mode_share = {"own": {m: float(run[working].double().mean()) for m, run in runs.items()},
                  "partner": {m: float(run[partner[paired & working]].double().mean()) for m, run in runs.items()}}
    own_bytes = source_bytes(crop)
    minimal = int(own_bytes.sum()) + 2 * elements
    again = (takes & ~paired[:, None, None]).double().mean((1, 2))  # unpaired samples read the partner again
    dram = minimal + int((own_bytes[partner] * again).sum())
    heights, widths = crop[:, 2], crop[:, 3]
    result = []
    for antialias in (False, True):
        def augment_batch(antialias=antialias):
            images = torch.empty((n, channels, side, side), dtype=torch.uint8)
            augment.batch_augment(images, torch.zeros(n, dtype=torch.int64), size, mean=mean, std=std,
                                  out_dtype=torch.bfloat16, antialias=antialias,
                                  generator=torch.Generator().manual_seed(BATCH_AUGMENT_SEED), backend="triton")

        def trips(k, launch, instructions, spans, antialias=antialias):
            skip_exit, (first, last), pair_exit, bodies = _batch_augment_regions(instructions)
            own = _tile_loop_trips(heights, widths, size, size, working_tiles) if antialias else []
            partner_trips = _tile_loop_trips(heights[partner], widths[partner], size, size,
                                             interpolates_partner) if antialias else []
            if sum(first <= start <= last for start, _ in spans) != len(partner_trips) or \
                    len(spans) != len(own) + len(partner_trips):
                raise ValueError("_batch_augment_kernel's loops are not where the hook expects them")
            end = instructions[-1].address
            return {"trips": own + partner_trips,
                    "shares": [(skip_exit + 1, end, work_share), (first, last, partner_share),
                               (pair_exit + 1, end, pair_share),
                               *((*bodies[output, mode], mode_share[output][mode]) for output, mode in bodies)]}
        result.append(Case(f"batch_augment uint8->bf16 norm {'antialias' if antialias else 'bilinear'} "
                           f"{n}x3x480x480->224", augment_batch, elements, minimal, lambda kernels, gpu: dram,
                           trip_counts={"_batch_augment_kernel": trips}))
    return result


def cases(quick=False):
    result = []
    rows, cols = (8192, 8192)
    n = rows * cols
    result.append(Case("dropout fwd bf16 8192x8192", lambda: rk.dropout(_bf16(rows, cols), 0.1, backend="triton"),
                       n, 4 * n))

    def dropout_add_bwd():
        x, r, b = _bf16(rows, cols, requires_grad=True), _bf16(rows, cols, requires_grad=True), _bf16(cols, requires_grad=True)
        out = rk.dropout_add(x, r, 0.1, bias=b, backend="triton")
        out.backward(torch.ones_like(out))
    result.append(Case("dropout_add+bias fwd+bwd bf16 8192x8192", dropout_add_bwd, n, 10 * n))

    result.append(Case("drop_path_add fwd bf16 8192x8192",
                       lambda: rk.drop_path_add(_bf16(rows, cols), _bf16(rows, cols), 0.1, backend="triton"),
                       n, int((6 - 2 * 0.1) * n)))

    ce_shapes = [(8192, 32000), (8192, 131072), (4096, 262144), (8, 262144)]
    for ce_rows, classes in (ce_shapes[:1] + ce_shapes[-1:] if quick else ce_shapes):
        def ce(ce_rows=ce_rows, classes=classes):
            x = _bf16(ce_rows, classes, requires_grad=True)
            rk.cross_entropy(x, torch.randint(0, classes, (ce_rows,)), label_smoothing=0.1, backend="triton").backward()
        result.append(Case(f"cross_entropy fwd+bwd bf16 {ce_rows}x{classes}", ce, ce_rows * classes,
                           4 * ce_rows * classes, _ce_dram_bytes(ce_rows, classes, 2),
                           {name: _ce_loops(ce_rows, classes, 2) for name in CE_KERNELS}))
        if (ce_rows, classes) == (8192, 32000):
            def ce_mixed(ce_rows=ce_rows, classes=classes):
                x = _bf16(ce_rows, classes, requires_grad=True)
                target = rk.MixedTarget(torch.randint(0, classes, (ce_rows,)), torch.randint(0, classes, (ce_rows,)),
                                        torch.rand(ce_rows))
                rk.cross_entropy(x, target, label_smoothing=0.1, backend="triton").backward()
            result.append(Case(f"cross_entropy fwd+bwd bf16 {ce_rows}x{classes} mixed targets", ce_mixed,
                               ce_rows * classes, 4 * ce_rows * classes, _ce_dram_bytes(ce_rows, classes, 2),
                               {name: _ce_loops(ce_rows, classes, 2) for name in CE_KERNELS}))

    images = (256, 3, 224, 224)
    pixels = math.prod(images)
    for layout in (torch.contiguous_format, torch.channels_last):
        def mix(layout=layout):
            x = torch.randint(0, 256, images, dtype=torch.uint8).contiguous(memory_format=layout)
            rk.cutmix_or_mixup(x, torch.randint(0, 1000, (images[0],)), mean=(0.485, 0.456, 0.406),
                               std=(0.229, 0.224, 0.225), out_dtype=torch.bfloat16, backend="triton")
        name = "NCHW" if layout is torch.contiguous_format else "channels_last"
        result.append(Case(f"cutmix_or_mixup uint8->bf16 {name} 256x3x224x224", mix, pixels, 3 * pixels))
    result.append(Case("cutmix_or_mixup bf16->bf16 NCHW 256x3x224x224",
                       lambda: rk.cutmix_or_mixup(_bf16(*images), torch.randint(0, 1000, (images[0],)), backend="triton"),
                       pixels, 4 * pixels))

    result += _augment_cases(quick)
    result += _batch_augment_cases(quick)

    params = 86_000_000 if not quick else 8_000_000

    def ema(params=params):
        model = torch.nn.ParameterList([torch.nn.Parameter(torch.empty(params // 64, 64, dtype=torch.bfloat16))])
        averaged = rk.ModelEMA(model, decay=0.999, ema_dtype=torch.float32, backend="triton")
        averaged.update(model)
    result.append(Case(f"ModelEMA.update bf16 weights, fp32 EMA, {params // 10**6}M", ema, params, 10 * params))
    return result


def run(quick=False, only=None):
    rows = []
    for case in cases(quick):
        if only and not any(word in case.name for word in only):
            continue
        with StandInDriver() as driver:
            case.run()
        kernels = [figures(launch, (case.trip_counts or {}).get(launch.name)) for launch in driver.launches]
        for gpu in GPUS:
            prediction = predict(case, kernels, gpu)
            for kernel in kernels:
                rows.append({"case": case.name, **prediction, "kernel": kernel.name, "ctas": kernel.ctas,
                             "warps": kernel.warps, "registers": kernel.registers, "spills": kernel.spills,
                             "shared": kernel.shared, "widest_load_bits": kernel.widest_load_bits,
                             "widest_store_bits": kernel.widest_store_bits,
                             "sass_per_element": kernel.warp_instructions * 32 / case.elements,
                             "barriers_per_kelement": 1000 * kernel.barriers * kernel.ctas / case.elements,
                             "shuffles_per_kelement": 1000 * kernel.shuffles * kernel.ctas / case.elements,
                             "mufu_per_element": kernel.mufu * 32 * kernel.ctas / case.elements / kernel.warps,
                             "resident_ctas_per_sm": kernel.resident_ctas_per_sm(),
                             "persistent": kernel.persistent,
                             "load_share": kernel.executed_load_bytes / max(1.0, sum(k.executed_load_bytes
                                                                                    for k in kernels)),
                             "known_trip_counts": kernel.known_trip_counts})
    return rows


def print_table(rows):
    print("MODEL (compiled sm_90 code, no GPU run): predicted % of copy bandwidth")
    print(f"{'case':<52} {'kernel':<36} {'regs':>4} {'ld/st bits':>10} {'SASS/el':>8} "
          f"{'H100 %':>7} {'H200 %':>7} {'bound H200':>10}")
    by_case = {}
    for row in rows:
        by_case.setdefault((row["case"], row["kernel"]), {})[row["gpu"]] = row
    for (case, kernel), per_gpu in by_case.items():
        h100, h200 = per_gpu["H100"], per_gpu["H200"]
        print(f"{case:<52} {kernel:<36} {h200['registers']:>4} "
              f"{h200['widest_load_bits']:>4}/{h200['widest_store_bits']:<5} {h200['sass_per_element']:>8.1f} "
              f"{h100['pct_copy']:>7.0f} {h200['pct_copy']:>7.0f} {h200['bound']:>10}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer and smaller cases")
    parser.add_argument("--csv", default=STATIC_CSV, help=f"where to write the rows (default {STATIC_CSV})")
    parser.add_argument("--only", nargs="*", help="only the cases whose name contains one of these words")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON (for tests), write no CSV")
    args = parser.parse_args()
    rows = run(args.quick, args.only)
    if args.json:
        print(json.dumps(rows))
        return
    print_table(rows)
    write_table(args.csv, rows)


if __name__ == "__main__":
    main()
