"""Compiles the dropout Triton kernels for sm_90 without a GPU and reports what the GPU would run.

    python scripts/triton_codegen_check.py

For each kernel and dtype: the widths of the global loads and stores, the Philox multiplies
per element (mul.hi.u32 per thread / elements per thread; one Philox4x32-7 call has 14, a few
fold away for the zero counter words, and serves four elements) and PTX instructions per
element, to compare with the issue rate the memory time allows. Arguments are
specialised as a real launch on torch tensors would be: pointers 16-byte aligned and the
sizes divisible by 16.
"""
import os
import re
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.pop("TRITON_INTERPRET", None)
import importlib  # noqa: E402

dropout = importlib.import_module("recipe_kernels.dropout")
drop_path_residual = importlib.import_module("recipe_kernels.drop_path_residual")


def compile_for_sm90(kernel, signature, constexprs, num_warps):
    """PTX of `kernel` for sm_90, with every pointer and non-constexpr integer marked divisible by 16."""
    names = list(signature)
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name, kind in signature.items()
             if kind.startswith("*") or kind in ("i32", "i64")}
    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "enable_fp_fusion": False})
    return compiled.asm["ptx"]


def report(name, ptx, elements_per_thread):
    widths = sorted(set(re.findall(r"(ld|st)\.global(?:\.\w+)*?\.(v\d\.)?b(\d+)", ptx)))
    memory_ops = [f"{op}{'.' + v[:-1] if v else ''}.b{bits}" for op, v, bits in widths]
    body = ptx[ptx.index("{", ptx.index(".entry")):]
    instructions = sum(1 for line in body.splitlines()
                       if line.strip().endswith(";") and not line.strip().startswith((".reg", "//")))
    print(f"{name:<40} {', '.join(memory_ops):<36} per element: "
          f"{ptx.count('mul.hi.u32') / elements_per_thread:.2f} mul.hi, "
          f"{instructions / elements_per_thread:.1f} PTX instructions")


def main():
    elements_per_thread = dropout.BLOCK // (dropout.NUM_WARPS * 32)
    for dtype in ("bf16", "fp32"):
        for has_residual, has_bias in ((False, False), (True, True)):
            signature = {"x_ptr": f"*{dtype}", "residual_ptr": f"*{dtype}", "bias_ptr": f"*{dtype}",
                         "seed_ptr": "*i64", "out_ptr": f"*{dtype}", "n_elements": "i64", "bias_numel": "i32",
                         "inverse_bias_numel": "fp32", "keep_from": "i32", "scale_bits": "i64"}
            constexprs = dict(HAS_RESIDUAL=has_residual, HAS_BIAS=has_bias, BIAS_MULTIPLE_OF_8=True, WIDE_BIAS=False,
                              MATH_DTYPE=tl.float32, INDEX_DTYPE=tl.int64, BLOCK=dropout.BLOCK, PHILOX_ROUNDS=7)
            ptx = compile_for_sm90(dropout._dropout_kernel, signature, constexprs, dropout.NUM_WARPS)
            report(f"dropout {dtype} residual={has_residual} bias={has_bias}", ptx, elements_per_thread)
        signature = {"x_ptr": f"*{dtype}", "residual_ptr": f"*{dtype}", "seed_ptr": "*i64", "out_ptr": f"*{dtype}",
                     "row_size": "i64", "blocks_per_row": "i64", "drop_threshold": "i32", "scale_bits": "i64"}
        constexprs = dict(HAS_RESIDUAL=True, MATH_DTYPE=tl.float32, BLOCK=dropout.DROP_PATH_BLOCK, KEEP_BITS=24,
                          PHILOX_ROUNDS=7)
        ptx = compile_for_sm90(dropout._drop_path_kernel, signature, constexprs, dropout.NUM_WARPS)
        report(f"drop_path {dtype} residual=True", ptx, dropout.DROP_PATH_BLOCK // (dropout.NUM_WARPS * 32))
        signature = {"grad_ptr": f"*{dtype}", "seed_ptr": "*i64", "grad_x_ptr": f"*{dtype}", "partial_ptr": "*fp32",
                     "rows": "i64", "columns": "i64", "keep_from": "i32", "scale_bits": "i64"}
        constexprs = dict(MATH_DTYPE=tl.float32, ROWS_PER_PROGRAM=64, ROWS_IN_FLIGHT=dropout.BIAS_BACKWARD_ROWS_IN_FLIGHT,
                          BLOCK_COLUMNS=dropout.BIAS_BACKWARD_COLUMNS, INDEX_DTYPE=tl.int64, PHILOX_ROUNDS=7)
        ptx = compile_for_sm90(dropout._dropout_bias_backward_kernel, signature, constexprs, 4)
        # Its row loop stays a loop: count one trip, ROWS_IN_FLIGHT rows of 1024 columns over 128 threads.
        report(f"dropout bias backward {dtype} (one trip)", ptx,
               dropout.BIAS_BACKWARD_ROWS_IN_FLIGHT * dropout.BIAS_BACKWARD_COLUMNS // 128)
    # drop_path_residual's rows kernel: the gather (no a), the residual add, and an fp32 stream with a bf16 branch.
    rows_elements_per_thread = drop_path_residual.BLOCK // (drop_path_residual.NUM_WARPS * 32)
    for a_dtype, b_dtype, out_dtype, has_a in (("bf16", "bf16", "bf16", False), ("bf16", "bf16", "bf16", True),
                                               ("fp32", "bf16", "fp32", True)):
        signature = {"a_ptr": f"*{a_dtype}", "b_ptr": f"*{b_dtype}", "index_ptr": "*i64", "out_ptr": f"*{out_dtype}",
                     "row_size": "i64", "blocks_per_row": "i64", "scale": "fp32"}
        constexprs = dict(HAS_A=has_a, BLOCK=drop_path_residual.BLOCK)
        ptx = compile_for_sm90(drop_path_residual._combine_rows_kernel, signature, constexprs,
                               drop_path_residual.NUM_WARPS)
        report(f"drop_path_residual rows a={a_dtype if has_a else None} b={b_dtype} out={out_dtype}", ptx,
               rows_elements_per_thread)


if __name__ == "__main__":
    main()
