"""Solvers of training stages as SolverParameter messages. Paths inside are
relative to the plan's directory, where ``recon-dec train`` runs caffe."""
from ..caffe_io.protos import pb2
from ..errors import ReconDecError

POLICIES = ("fixed", "step", "exp", "inv", "poly")
DISPLAY = 20
# Keys of a stage's solver settings (a method gives every one a default)
SETTINGS = ("batch", "iter_size", "base_lr", "lr_policy", "gamma", "stepsize", "max_iter",
            "weight_decay", "snapshot", "momentum", "random_seed")
# optional: the solver type (default SGD) and Adam's second moment and delta
SOLVER_TYPES = ("SGD", "Adam")


def _g(x):
    return float(f"{x:g}")


def solver_message(net, settings, snapshot_prefix, test_iter=None, test_interval=None, solver_mode="GPU"):
    """The SolverParameter of one stage (SGD with momentum)."""
    s = pb2().SolverParameter()
    s.net = net
    s.base_lr = _g(settings["base_lr"])
    policy = settings["lr_policy"]
    if policy not in POLICIES:
        raise ReconDecError(f"--lr-policy: {policy!r} is not one of {', '.join(POLICIES)}")
    s.lr_policy = policy
    if policy not in ("fixed", "poly"):
        s.gamma = _g(settings["gamma"])
    if policy == "step":
        s.stepsize = int(settings["stepsize"])
    if policy == "inv":
        s.power = 0.75
    if policy == "poly":  # base_lr (1 - iter/max_iter)^power: power 1 decays linearly to 0
        s.power = _g(settings.get("power", 1.0))
    s.momentum = _g(settings["momentum"])
    kind = settings.get("type", "SGD")
    if kind not in SOLVER_TYPES:
        raise ReconDecError(f"solver type {kind!r} is not one of {', '.join(SOLVER_TYPES)}")
    if kind != "SGD":
        s.type = kind
        s.momentum2 = _g(settings.get("momentum2", 0.999))
        s.delta = _g(settings.get("delta", 1e-8))
    s.weight_decay = _g(settings["weight_decay"])
    s.iter_size = int(settings["iter_size"])
    max_iter = int(settings["max_iter"])
    s.max_iter = max_iter
    s.display = s.average_loss = DISPLAY
    s.snapshot = min(int(settings["snapshot"]), max_iter)
    s.snapshot_prefix = snapshot_prefix
    if test_iter:
        s.test_iter.append(int(test_iter))
        s.test_interval = int(test_interval)
        s.test_initialization = False
    s.solver_mode = getattr(s, solver_mode)
    if settings["random_seed"] >= 0:
        s.random_seed = int(settings["random_seed"])
    return s


def stage_settings(defaults, key, overrides):
    """A stage's ``defaults`` merged with ``overrides`` ({setting: {stage
    key or "all": value}}); the stage's own key wins over "all"."""
    s = dict(defaults)
    for name, per in (overrides or {}).items():
        if name not in s:
            continue
        if key in per:
            s[name] = per[key]
        elif "all" in per:
            s[name] = per["all"]
    return s


def stage_output(snapshot_prefix, max_iter):
    """The caffemodel Caffe writes at the end of a stage."""
    return f"{snapshot_prefix}_iter_{int(max_iter)}.caffemodel"
