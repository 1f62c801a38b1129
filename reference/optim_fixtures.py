"""Reference sequences for rustspeed's optimizers and LR schedules: writes two small JSON files.

tests/fixtures/optim.json
    For each optimizer case: hyperparameters, the initial tensors, the gradients of every step and the
    parameters after every step (plus Lamb's per-tensor trust ratios), computed in float64:
      - AdamW                 torch.optim.AdamW
      - Adam, L2 decay        torch.optim.Adam(weight_decay=...)     (DeepSpeed adam_w_mode=false)
      - Adam without bias correction, both modes: the FusedAdam rule written out below (torch has no switch);
        the written-out rule is first checked against torch.optim.Adam/AdamW with bias correction.
      - SGD                   torch.optim.SGD: plain, momentum, dampening, nesterov, weight decay
      - Lion                  the 3-line rule of deepspeed-semantics.md §1.5 with torch.sign (torch has no Lion)
      - Lamb                  DeepSpeed FusedLamb's kernel (csrc/lamb/fused_lamb_cuda_kernel.cu) written out:
                              raw-moment update, trust ratio on it, bias correction folded into the step size
    Initial values and gradients are float32 numbers (stored exactly as float64) so that rustspeed, which
    stores fp32, starts from the very same values; hyperparameters are rounded to float32 for the same reason.

tests/fixtures/lr_schedules.json
    For each schedule case: DeepSpeed's parameters and the lr (and betas) the optimizer holds at each of the
    first K optimizer steps, recorded from the real deepspeed.runtime.lr_schedules driven in DeepSpeed's engine
    order: the scheduler is built (which sets the first lr), then per step `optimizer.step()` followed by
    `lr_scheduler.step()`.

Versions used for the committed files: torch 2.15.0, deepspeed 0.16.5 (pip install deepspeed==0.16.5 with
DS_BUILD_OPS=0; only the pure-Python lr_schedules module is used).

Run:  python reference/optim_fixtures.py   (tests never need torch or deepspeed)
"""

import json
import logging
import math
import os

import numpy as np
import torch

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
STEPS = 5
SEED = 1234


def f32(x):
    """The float64 value of the float32 nearest to x (what rustspeed's f32 hyperparameters hold)."""
    return float(np.float32(x))


def as_list(t):
    return [float(x) for x in t.reshape(-1).tolist()]


# ----------------------------------------------------------------------------------------------- optimizers


def make_data(sizes, zero_tensor=None):
    """Initial float32 tensors and STEPS float32 gradients per tensor; one gradient entry is exactly 0 on the
    first step (Lion's sign(0) and Adam's 0/eps path)."""
    gen = torch.Generator().manual_seed(SEED)
    initial = [torch.randn(n, generator=gen, dtype=torch.float32) for n in sizes]
    if zero_tensor is not None:
        initial[zero_tensor].zero_()
    grads = [[torch.randn(n, generator=gen, dtype=torch.float32) * 0.5 for n in sizes] for _ in range(STEPS)]
    grads[0][0][3] = 0.0
    return [t.double() for t in initial], [[g.double() for g in step] for step in grads]


def run_torch(make_opt, initial, grads):
    params = [t.clone().requires_grad_(True) for t in initial]
    opt = make_opt(params)
    after = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
        after.append([p.detach().clone() for p in params])
    return after


def adam_rule(hp, initial, grads):
    """FusedAdam (multi_tensor_adam.cu) in float64."""
    params = [t.clone() for t in initial]
    m = [torch.zeros_like(t) for t in initial]
    v = [torch.zeros_like(t) for t in initial]
    b1, b2, lr, eps, wd = hp["beta1"], hp["beta2"], hp["lr"], hp["eps"], hp["weight_decay"]
    after = []
    for step, step_grads in enumerate(grads, start=1):
        bc1 = 1 - b1**step if hp["bias_correction"] else 1.0
        bc2 = 1 - b2**step if hp["bias_correction"] else 1.0
        for i, g in enumerate(step_grads):
            p = params[i]
            if not hp["adam_w_mode"]:
                g = g + wd * p
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            update = (m[i] / bc1) / (torch.sqrt(v[i] / bc2) + eps)
            if hp["adam_w_mode"]:
                update = update + wd * p
            params[i] = p - lr * update
        after.append([p.clone() for p in params])
    return after


def lion_rule(hp, initial, grads):
    params = [t.clone() for t in initial]
    m = [torch.zeros_like(t) for t in initial]
    b1, b2, lr, wd = hp["beta1"], hp["beta2"], hp["lr"], hp["weight_decay"]
    after = []
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            c = b1 * m[i] + (1 - b1) * g
            params[i] = params[i] * (1 - lr * wd) - lr * torch.sign(c)
            m[i] = b2 * m[i] + (1 - b2) * g
        after.append([p.clone() for p in params])
    return after


def lamb_rule(hp, initial, grads):
    """FusedLamb's kernel: part 1 (moments, norms of p and of the raw update), part 3 (clamped ratio, step)."""
    params = [t.clone() for t in initial]
    m = [torch.zeros_like(t) for t in initial]
    v = [torch.zeros_like(t) for t in initial]
    b1, b2, lr, eps, wd = hp["beta1"], hp["beta2"], hp["lr"], hp["eps"], hp["weight_decay"]
    after, ratios = [], []
    for step, step_grads in enumerate(grads, start=1):
        if hp["bias_correction"]:
            step_size = lr * math.sqrt(1 - b2**step) / (1 - b1**step)
        else:
            step_size = lr
        step_ratios = []
        for i, g in enumerate(step_grads):
            p = params[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            denom = torch.sqrt(v[i] + eps) if hp["eps_inside_sqrt"] else torch.sqrt(v[i]) + eps
            update = m[i] / denom + wd * p
            w_norm, u_norm = float(torch.linalg.norm(p)), float(torch.linalg.norm(update))
            ratio = 1.0
            if w_norm != 0 and u_norm != 0:
                ratio = w_norm / u_norm
                ratio = min(ratio, hp["max_coeff"])
                ratio = max(ratio, hp["min_coeff"])
            params[i] = p - step_size * ratio * update
            step_ratios.append(ratio)
        after.append([p.clone() for p in params])
        ratios.append(step_ratios)
    return after, ratios


def check_adam_rule():
    """The written-out Adam rule must agree with torch's Adam/AdamW before it serves as an oracle."""
    initial, grads = make_data([12])
    for adam_w_mode, cls in [(True, torch.optim.AdamW), (False, torch.optim.Adam)]:
        hp = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, bias_correction=True,
                  adam_w_mode=adam_w_mode)
        ours = adam_rule(hp, initial, grads)
        ref = run_torch(lambda ps: cls(ps, lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1), initial, grads)
        for a, b in zip(ours, ref):
            assert torch.allclose(a[0], b[0], rtol=0, atol=1e-14), (adam_w_mode, a[0] - b[0])


def optimizer_cases():
    cases = []

    def add(name, optimizer, hyper, sizes, after, ratios=None, zero_tensor=None):
        initial, grads = make_data(sizes, zero_tensor)
        case = {
            "name": name,
            "optimizer": optimizer,
            "hyper": hyper,
            "initial": [as_list(t) for t in initial],
            "grads": [[as_list(g) for g in step] for step in grads],
            "params_after": [[as_list(p) for p in step] for step in after],
        }
        if ratios is not None:
            case["trust_ratios"] = ratios
        cases.append(case)

    # Adam family.
    for name, adam_w_mode, bias_correction in [
        ("adamw", True, True),
        ("adam_l2", False, True),
        ("adamw_no_bias_correction", True, False),
        ("adam_l2_no_bias_correction", False, False),
    ]:
        hp = dict(lr=f32(0.01), beta1=f32(0.9), beta2=f32(0.999), eps=f32(1e-8), weight_decay=f32(0.1),
                  bias_correction=bias_correction, adam_w_mode=adam_w_mode)
        initial, grads = make_data([12])
        if bias_correction:
            cls = torch.optim.AdamW if adam_w_mode else torch.optim.Adam
            after = run_torch(lambda ps: cls(ps, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                                             weight_decay=hp["weight_decay"]), initial, grads)
        else:
            after = adam_rule(hp, initial, grads)
        add(name, "adam", hp, [12], after)

    # SGD family.
    for name, momentum, dampening, nesterov, wd in [
        ("sgd_plain", 0.0, 0.0, False, 0.0),
        ("sgd_plain_weight_decay", 0.0, 0.0, False, 0.05),
        ("sgd_momentum", 0.9, 0.0, False, 0.0),
        ("sgd_momentum_dampening", 0.9, 0.5, False, 0.0),
        ("sgd_nesterov_weight_decay", 0.9, 0.0, True, 0.05),
    ]:
        hp = dict(lr=f32(0.1), momentum=f32(momentum), dampening=f32(dampening), nesterov=nesterov,
                  weight_decay=f32(wd))
        initial, grads = make_data([12])
        after = run_torch(lambda ps: torch.optim.SGD(ps, lr=hp["lr"], momentum=hp["momentum"],
                                                     dampening=hp["dampening"], nesterov=nesterov,
                                                     weight_decay=hp["weight_decay"]), initial, grads)
        add(name, "sgd", hp, [12], after)

    # Lion.
    for name, wd in [("lion", 0.0), ("lion_weight_decay", 0.5)]:
        hp = dict(lr=f32(0.01), beta1=f32(0.9), beta2=f32(0.99), weight_decay=f32(wd))
        initial, grads = make_data([12])
        add(name, "lion", hp, [12], lion_rule(hp, initial, grads))

    # Lamb: three tensors, the last all zeros at the start (trust ratio 1 on the first step, then tiny: the
    # min_coeff clamp). "lamb_clamped" puts the bounds inside the unclamped ratios (about 0.2 to 0.31).
    sizes, zero_tensor = [12, 5, 4], 2
    for name, overrides in [
        ("lamb", {}),
        ("lamb_eps_inside_sqrt_no_bias_correction", dict(eps_inside_sqrt=True, bias_correction=False,
                                                         eps=f32(1e-6))),
        ("lamb_clamped", dict(max_coeff=f32(0.25), min_coeff=f32(0.22))),
    ]:
        hp = dict(lr=f32(0.01), beta1=f32(0.9), beta2=f32(0.999), eps=f32(1e-8), eps_inside_sqrt=False,
                  weight_decay=f32(0.01), bias_correction=True, max_coeff=f32(10.0), min_coeff=f32(0.01))
        hp.update(overrides)
        initial, grads = make_data(sizes, zero_tensor)
        after, ratios = lamb_rule(hp, initial, grads)
        add(name, "lamb", hp, sizes, after, ratios, zero_tensor)
    return cases


# ------------------------------------------------------------------------------------------------ schedules


def schedule_cases():
    import deepspeed
    from deepspeed.runtime import lr_schedules
    from deepspeed.utils import logger

    logger.setLevel(logging.ERROR)  # "Attempting to get learning rate from scheduler before it has started"
    specs = [
        ("warmup_lr_log", "WarmupLR", dict(warmup_min_lr=0.01, warmup_max_lr=0.1, warmup_num_steps=5), 10),
        ("warmup_lr_linear", "WarmupLR",
         dict(warmup_min_lr=0.01, warmup_max_lr=0.1, warmup_num_steps=5, warmup_type="linear"), 10),
        ("warmup_lr_one_step", "WarmupLR",
         dict(warmup_min_lr=0.0, warmup_max_lr=0.1, warmup_num_steps=1, warmup_type="linear"), 5),
        ("warmup_decay_lr_linear", "WarmupDecayLR",
         dict(total_num_steps=12, warmup_min_lr=0.02, warmup_max_lr=0.2, warmup_num_steps=4,
              warmup_type="linear"), 18),
        ("warmup_decay_lr_log", "WarmupDecayLR",
         dict(total_num_steps=12, warmup_min_lr=0.02, warmup_max_lr=0.2, warmup_num_steps=4), 18),
        ("warmup_cosine_lr_log", "WarmupCosineLR",
         dict(total_num_steps=12, warmup_min_ratio=0.1, warmup_num_steps=4, cos_min_ratio=0.01), 20),
        ("warmup_cosine_lr_linear", "WarmupCosineLR",
         dict(total_num_steps=12, warmup_min_ratio=0.1, warmup_num_steps=4, cos_min_ratio=0.01,
              warmup_type="linear"), 20),
        ("one_cycle_asymmetric_decay", "OneCycle",
         dict(cycle_min_lr=0.01, cycle_max_lr=0.1, decay_lr_rate=0.5, cycle_first_step_size=4,
              cycle_second_step_size=6, decay_step_size=2, cycle_min_mom=0.8, cycle_max_mom=0.9,
              decay_mom_rate=0.1), 16),
        ("one_cycle_symmetric_no_decay", "OneCycle",
         dict(cycle_min_lr=0.01, cycle_max_lr=0.1, cycle_first_step_size=3), 10),
        ("one_cycle_no_momentum", "OneCycle",
         dict(cycle_min_lr=0.01, cycle_max_lr=0.1, cycle_first_step_size=3, cycle_momentum=False,
              decay_lr_rate=1.0, decay_step_size=1), 10),
        ("lr_range_test_continuous", "LRRangeTest",
         dict(lr_range_test_min_lr=0.01, lr_range_test_step_size=3, lr_range_test_step_rate=2.0), 10),
        ("lr_range_test_staircase", "LRRangeTest",
         dict(lr_range_test_min_lr=0.01, lr_range_test_step_size=3, lr_range_test_step_rate=2.0,
              lr_range_test_staircase=True), 10),
    ]
    base_lr, base_betas = 0.5, (0.9, 0.999)
    cases = []
    for name, kind, params, updates in specs:
        weight = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        optimizer = torch.optim.Adam([weight], lr=base_lr, betas=base_betas)
        scheduler = getattr(lr_schedules, kind)(optimizer, **params)
        lrs, betas = [], []
        for _ in range(updates):
            group = optimizer.param_groups[0]
            lrs.append(float(group["lr"]))
            betas.append([float(b) for b in group["betas"]])
            weight.grad = torch.ones_like(weight)
            optimizer.step()
            scheduler.step()
        cases.append({"name": name, "type": kind, "params": params, "base_lr": base_lr,
                      "base_betas": list(base_betas), "lr_per_update": lrs, "betas_per_update": betas})
    return deepspeed.__version__, cases


def main():
    torch.set_default_dtype(torch.float64)
    check_adam_rule()
    os.makedirs(OUT_DIR, exist_ok=True)
    optim = {"torch_version": torch.__version__, "steps": STEPS, "cases": optimizer_cases()}
    with open(os.path.join(OUT_DIR, "optim.json"), "w") as f:
        json.dump(optim, f, indent=None, separators=(",", ":"))
        f.write("\n")
    ds_version, cases = schedule_cases()
    schedules = {"deepspeed_version": ds_version, "torch_version": torch.__version__, "cases": cases}
    with open(os.path.join(OUT_DIR, "lr_schedules.json"), "w") as f:
        json.dump(schedules, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
