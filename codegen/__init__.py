"""Lowering of fused graphs to kernels: memory planning, kernel generation (cpu/, cuda/), runtime.

The reference target runs the graph through `ir.Interpreter`; native targets arrive with codegen.
"""
