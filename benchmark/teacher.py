"""A distilling run's teacher: its checkpoint loaded, checked to be the run's own (the suite's
teacher run or the imported `teacher_ckpt:`) and described for compute.json.

Both kinds of teacher load and initialise the same way (methods that start from the teacher copy
its EMA weights into the student); a trained teacher's compute is carried into the student's
totals, an imported one's is unknown (None, not 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from benchmark.runs import compute_json_path, load_net_from_ckpt


def load_teacher(run, suite, teacher_ckpt, net: nn.Module, method, device) -> tuple[nn.Module | None, dict | None]:
    """(teacher net, teacher info for compute.json) of a distilling method, or (None, None).

    The teacher is the run's named teacher run or its imported `teacher_ckpt:`; both load and
    initialise the same way (methods that start from the teacher copy its EMA weights into `net`).
    A trained teacher's compute is carried into the student's totals; an imported one's is unknown."""
    from benchmark import checkpoint
    from benchmark.errors import ConfigError

    if method.teacher is None:
        return None, None
    if teacher_ckpt is None:
        raise ConfigError(f"run {run.name} needs a teacher checkpoint", "pass --teacher (snakemake does this)")
    tstate = checkpoint.load(teacher_ckpt)
    teacher_info = _teacher_info(run, suite, tstate, Path(teacher_ckpt))
    teacher = load_net_from_ckpt(tstate).to(device)
    if method.init_from_teacher:
        try:
            net.load_state_dict(tstate["ema"])
        except RuntimeError as e:
            raise ConfigError(f"{run.name}: cannot initialise from teacher {teacher_info['run']} ({str(e)[:80]})",
                              "use the same `net:` settings as the teacher") from e
    return teacher, teacher_info


def _teacher_info(run, suite, tstate: dict[str, Any], path: Path) -> dict[str, Any]:
    """Check that `path` is the run's teacher and describe it for compute.json: the named teacher
    run's checkpoint (its compute.json's totals carried over) or the imported `teacher_ckpt:` whose
    sha256 is in the run's config hash (training compute not measured by us: None, not 0)."""
    import json

    from benchmark import checkpoint
    from benchmark.errors import CheckpointError
    from benchmark.provenance import sha256_file

    digest = sha256_file(path)
    name = str(tstate.get("run"))
    if run.teacher_ckpt:
        if digest != run.teacher_sha256:
            raise CheckpointError(f"teacher checkpoint {path} (sha256 {digest[:12]}) is not the run's teacher_ckpt "
                                  f"{run.teacher_ckpt} (sha256 {str(run.teacher_sha256)[:12]})",
                                  "pass the suite's teacher_ckpt file (snakemake does); a changed file needs a re-run")
        return {"ckpt": str(path), "sha256": digest, "run": name, "imported": True,
                "source": f"imported:{path.name}@{digest[:12]}", "released": tstate.get("source"),
                "total_flops": None, "device_hours": None, "unmeasured": f"imported:{path.name}@{digest[:12]}"}
    if name.startswith("imported:"):
        raise CheckpointError(f"teacher checkpoint {path} is an imported network, but run {run.name}'s teacher is "
                              f"the suite run {run.teacher}",
                              f"name it in the suite as `teacher_ckpt: {path}` (its sha256 enters the config hash)")
    checkpoint.check_owner(tstate, suite.runs[run.teacher], path)  # the named teacher, this config
    tcompute = json.loads(compute_json_path(path).read_text())
    return {"ckpt": str(path), "sha256": digest, "run": run.teacher, "imported": False,
            "source": f"trained:{run.teacher}", "total_flops": tcompute["total_flops"],
            "device_hours": tcompute["device_hours_total"],
            "unmeasured": tcompute.get("unmeasured_teacher")}  # an imported network further up the chain
