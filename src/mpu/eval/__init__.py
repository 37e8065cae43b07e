"""mpu.eval — TOFU, MUSE and WMDP metrics and membership-inference attacks (OpenUnlearning semantics).

Definitions follow docs/metrics.md; every deviation from OpenUnlearning is an opt-in `EvalFlags`
field. Modules: `metrics` (pure maths on numbers), `primitives` (model forward passes and
greedy generation), `mia` (the six attacks), `tofu` / `muse` / `wmdp` (benchmark suites),
`io` (model loading, reference logs, result files) and `report` (markdown/HTML reports).
"""

from mpu.eval.flags import EvalFlags

__all__ = ["EvalFlags"]
