"""distill_b3lyp: distil B3LYP/def2-SVP into learned exchange–correlation functionals.

Two learned functionals (a constrained semilocal MLP meta-GGA and PBE + a nonlocal atom-centred
correction from the model zoo) are each trained with two protocols on the same molecules, the
same number of full-batch Adam steps and the same learning rate:

- ``energy_density`` ("E+ρ"): the Kohn–Sham-regularised energy loss plus the density loss, both
  through the learned functional's own SCF (one SCF shared by both terms, implicit adjoint);
- ``derivative`` ("E+∂E"): the derivative-informed (Sobolev) loss at the fixed B3LYP density:
  the energy there (``non_self_consistent_loss``) plus ``derivative_loss`` (occupied–virtual
  orbital gradient and orbital-Hessian–vector products, labels from nlxc's B3LYP). No SCF.

Then, on held-out molecules, from each functional's own SCF (minao start): total-energy error
against B3LYP, the density-driven error E_B3LYP[ρ_θ] − E_B3LYP[ρ_B3LYP], ∫(ρ_θ − ρ_B3LYP)²,
the dipole error, and the number of PySCF B3LYP SCF cycles started from ρ_θ versus from
PySCF's default (minao) guess.

    python experiments/distill_b3lyp/run.py [--config PATH] [--quick]

Writes ``results/results.json``, ``results/table.md`` and PNG plots next to the config.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
import tomllib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
AU_TO_DEBYE = 2.541746


def log(*args):
    print(*args, flush=True)


# ----------------------------------------------------------------------------- configuration


def load_config(path: str, quick: bool) -> dict:
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    cfg["_base"] = os.path.dirname(os.path.abspath(path))
    if quick:
        q = cfg.get("quick", {})
        for key in ("train", "test"):
            if key in q:
                cfg["data"][key] = q[key]
        if "steps" in q:
            cfg["training"]["steps"] = q["steps"]
        if "n_direction_sets" in q:
            for p in cfg["protocols"].values():
                if p.get("loss", "") == "derivative" and "n_direction_sets" in p:
                    p["n_direction_sets"] = q["n_direction_sets"]
        cfg["results_dir"] = os.path.join(cfg.get("results_dir", "results"), "quick")
    cfg["_quick"] = quick
    return cfg


def resolve(cfg, path):
    return path if os.path.isabs(path) else os.path.join(cfg["_base"], path)


# ----------------------------------------------------------------------------- data


def molecules_by_name():
    import nlxc

    return {m.name: m for m in nlxc.data.g2().molecules}


def make_batch(systems, shape, size):
    """Pad Systems to `shape`, fill to `size` with masked copies of the last one, stack."""
    import jax.numpy as jnp
    import nlxc
    from nlxc.batch import Batch, stack

    n = len(systems)
    order = list(range(n)) + [n - 1] * (size - n)
    padded = [nlxc.pad_system(systems[i], **dataclasses.asdict(shape), host=True) for i in order]
    return Batch(system=stack(padded),
                 index=jnp.asarray(list(range(n)) + [-1] * (size - n), dtype=jnp.int32),
                 mask=jnp.asarray([True] * n + [False] * (size - n)))


# ----------------------------------------------------------------------------- models


def build_model(spec: dict, key):
    """(functional, filter spec of the trainable leaves)."""
    import equinox as eqx
    import jax
    import jax.random as jr
    import nlxc

    kind = spec["kind"]
    if kind == "semilocal_mlp":
        k1, k2 = jr.split(key)
        f = (nlxc.xc.SlaterExchange() * nlxc.models.MLP(2, width=spec["width"], depth=spec["depth"], key=k1)
             + nlxc.xc.PW92Correlation.modified() * nlxc.models.MLP(4, width=spec["width"], depth=spec["depth"],
                                                                     key=k2))
        trainable = jax.tree.map(eqx.is_inexact_array, f)
    elif kind == "pbe_atom_centred":
        f = nlxc.get_functional("pbe") + nlxc.models.AtomCentredCorrection(
            width=spec["width"], depth=spec["depth"], embedding_dim=spec["embedding_dim"], key=key)
        trainable = jax.tree.map(eqx.is_inexact_array, f)
        # the PBE baseline is frozen: only the nonlocal correction is trained
        trainable = eqx.tree_at(lambda t: t.terms[0], trainable,
                                jax.tree.map(lambda _: False, trainable.terms[0]))
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    return f, trainable


def count_parameters(f, trainable):
    import equinox as eqx
    import jax

    params, _ = eqx.partition(f, trainable)
    return int(sum(x.size for x in jax.tree.leaves(params)))


# ----------------------------------------------------------------------------- training


def make_step(static, optimizer, loss_kind: str, pcfg: dict, tcfg: dict):
    """A jitted full-batch Adam step of one protocol; the batch and targets are arguments."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import nlxc
    from nlxc import losses

    adjoint = nlxc.scf.ImplicitAdjoint(rtol=tcfg["adjoint_rtol"], atol=tcfg["adjoint_atol"])
    max_steps = int(tcfg["scf_max_steps"])

    def loss_fn(params, batch, target):
        f = eqx.combine(params, static)
        if loss_kind == "energy_density":
            # warm start from the B3LYP density (same fixed point, fewer iterations)
            result = eqx.filter_vmap(lambda s, p0: nlxc.solve(f, s, initial_density_matrix=p0, max_steps=max_steps,
                                                               adjoint=adjoint))(batch.system, target.density_matrix)
            le = losses.energy_loss(result, batch, target)
            ld = losses.density_loss(result, batch, target, metric=pcfg["density_metric"])
            total = pcfg["energy_weight"] * le + pcfg["density_weight"] * ld
            err = jnp.where(batch.mask, result.energy - target.energy, 0.0)
            ok = jnp.all(jnp.where(batch.mask, result.converged, True))
            return total, {"loss": total, "energy": le, "density": ld, "errors": err, "converged": ok,
                           "scf_iterations": jnp.max(result.n_iterations)}
        if loss_kind != "derivative":
            raise ValueError(f"unknown loss {loss_kind!r}")
        le = losses.non_self_consistent_loss(f, batch, target)
        zero = jnp.zeros(())
        lg = losses.derivative_loss(f, batch, target, hessian_weight=0.0) if pcfg["gradient_weight"] else zero
        lh = losses.derivative_loss(f, batch, target, gradient_weight=0.0) if pcfg["hessian_weight"] else zero
        total = pcfg["energy_weight"] * le + pcfg["gradient_weight"] * lg + pcfg["hessian_weight"] * lh
        return total, {"loss": total, "energy": le, "gradient": lg, "hessian": lh,
                       "converged": jnp.array(True), "scf_iterations": jnp.array(0)}

    @eqx.filter_jit
    def step(params, opt_state, batch, target):
        (value, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, target)
        finite = jnp.isfinite(value) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        updates, new_state = optimizer.update(grads, opt_state, params)
        new_params = eqx.apply_updates(params, updates)
        return new_params, new_state, aux, finite

    return step


def train(functional, trainable, loss_kind, pcfg, tcfg, lr, batch, targets_list):
    """Full-batch Adam. A step whose SCF did not converge or whose loss/gradient is not finite
    is not applied (and is recorded)."""
    import equinox as eqx
    import jax
    import optax
    from tqdm.auto import tqdm

    params, static = eqx.partition(functional, trainable)
    schedule = tcfg.get("lr_schedule", "constant")
    if schedule == "cosine":
        lr = optax.cosine_decay_schedule(lr, decay_steps=tcfg["steps"], alpha=tcfg.get("lr_final_fraction", 0.0))
    elif schedule != "constant":
        raise ValueError(f"unknown lr_schedule {schedule!r}")
    optimizer = optax.adam(lr)
    opt_state = optimizer.init(params)
    step = make_step(static, optimizer, loss_kind, pcfg, tcfg)
    history, skipped = [], []
    t_start = time.time()
    compile_s = None
    bar = tqdm(range(tcfg["steps"]), desc=f"{pcfg.get('label', loss_kind)}", leave=True, file=sys.stdout)
    for i in bar:
        t0 = time.time()
        target = targets_list[i % len(targets_list)]
        new_params, new_state, aux, finite = step(params, opt_state, batch, target)
        aux = jax.tree.map(np.asarray, aux)
        finite = bool(finite)
        dt = time.time() - t0
        if compile_s is None:
            compile_s = dt
        row = {"step": i, "seconds": dt, "applied": bool(finite and aux["converged"])}
        for k, v in aux.items():
            row[k] = v.tolist() if np.ndim(v) else (bool(v) if v.dtype == bool else float(v))
        if "errors" in row:
            e = np.abs(np.asarray(row.pop("errors")))[: int(np.sum(np.asarray(batch.mask)))]
            row["energy_mae_mha"] = float(1e3 * e.mean())
        history.append(row)
        if row["applied"]:
            params, opt_state = new_params, new_state
        else:
            skipped.append({"step": i, "finite": finite, "converged": bool(aux["converged"])})
        bar.set_postfix(loss=f"{row['loss']:.3e}", E=f"{row['energy']:.2e}")
    wall = time.time() - t_start
    return eqx.combine(params, static), {"history": history, "skipped_steps": skipped, "wall_s": wall,
                                          "first_step_s_incl_compile": compile_s}


# ----------------------------------------------------------------------------- evaluation


def make_evaluator():
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import nlxc
    from nlxc.losses import density_difference
    from nlxc.scf import energy_components

    b3lyp = nlxc.get_functional("b3lyp")

    @eqx.filter_jit
    def evaluate(functional, batch, p_ref, max_steps):
        result = eqx.filter_vmap(lambda s: nlxc.solve(functional, s, max_steps=max_steps))(batch.system)

        def one(s, p, q):
            f = b3lyp.prepare(s)
            e_p = energy_components(f, s, p).total
            e_q = energy_components(f, s, q).total
            e_theta_ref = energy_components(functional.prepare(s), s, q).total
            dmu = nlxc.dipole_moment(p, s) - nlxc.dipole_moment(q, s)
            return e_p - e_q, e_q, e_theta_ref, density_difference(s, p, q, "l2"), jnp.linalg.norm(dmu)

        dde, e_b3lyp_ref, e_theta_ref, l2, dip = eqx.filter_vmap(one)(batch.system, result.density_matrix, p_ref)
        return {"energy_at_reference_density": e_theta_ref, "energy": result.energy, "converged": result.converged, "n_iterations": result.n_iterations,
                "density_matrix": result.density_matrix, "density_driven_error": dde,
                "nlxc_b3lyp_at_reference": e_b3lyp_ref, "density_l2": l2, "dipole_error_au": dip}

    return evaluate


def pyscf_b3lyp_cycles(mol, dm_totals: dict, grid_level, conv_tol, max_cycle):
    """PySCF B3LYP SCF cycles (density-fitted, the settings of compute_references) from the
    default minao guess (key None) and from each total density matrix in `dm_totals`."""
    from pyscf import df, dft

    mf = dft.RKS(mol, xc="b3lyp")
    mf.grids.level = grid_level
    mf.small_rho_cutoff = 0.0
    mf = mf.density_fit(auxbasis=df.make_auxbasis(mol))
    mf.verbose = 0
    mf.chkfile = None
    mf.init_guess = "minao"
    mf.conv_tol = conv_tol
    mf.max_cycle = max_cycle
    out = {}
    for label, dm in [(None, None)] + list(dm_totals.items()):
        t0 = time.time()
        e = mf.kernel() if dm is None else mf.kernel(dm0=dm)
        out["default" if label is None else label] = {"cycles": int(mf.cycles), "converged": bool(mf.converged),
                                                       "energy": float(e), "seconds": time.time() - t0}
    return out


# ----------------------------------------------------------------------------- reporting


def summarise(ev, names, e_ref):
    from nlxc.constants import KCAL_PER_MOL  # Hartree per kcal/mol

    n = len(names)
    conv = np.asarray(ev["converged"])[:n]
    err = np.asarray(ev["energy"])[:n] - e_ref
    finite = np.isfinite(err)
    ok = conv & finite
    per = {}
    for i, name in enumerate(names):
        per[name] = {"energy": float(ev["energy"][i]), "energy_error_mha": float(1e3 * err[i]),
                     "energy_at_reference_density_error_mha": float(1e3 * (ev["energy_at_reference_density"][i]
                                                                             - e_ref[i])),
                     "converged": bool(conv[i]), "scf_iterations": int(ev["n_iterations"][i]),
                     "density_driven_error_mha": float(1e3 * ev["density_driven_error"][i]),
                     "density_l2": float(ev["density_l2"][i]),
                     "dipole_error_debye": float(AU_TO_DEBYE * ev["dipole_error_au"][i])}
    sel = np.where(ok)[0]
    b3_dev = float(np.max(np.abs(np.asarray(ev["nlxc_b3lyp_at_reference"])[:n] - e_ref)))

    def mean(key):
        return float(np.mean([per[names[i]][key] for i in sel])) if len(sel) else float("nan")

    return {"per_molecule": per,
            "n_converged": int(ok.sum()), "n_molecules": n,
            "not_converged": [names[i] for i in range(n) if not ok[i]],
            "energy_mae_mha": float(1e3 * np.mean(np.abs(err[sel]))) if len(sel) else float("nan"),
            "energy_mae_kcal": float(np.mean(np.abs(err[sel])) / KCAL_PER_MOL) if len(sel) else float("nan"),
            "energy_max_abs_mha": float(1e3 * np.max(np.abs(err[sel]))) if len(sel) else float("nan"),
            "density_driven_error_mha": mean("density_driven_error_mha"),
            "energy_at_reference_density_mae_mha": float(np.mean(np.abs(
                [per[nm]["energy_at_reference_density_error_mha"] for nm in names]))),
            "density_l2": mean("density_l2"),
            "dipole_error_debye": mean("dipole_error_debye"),
            "nlxc_b3lyp_vs_pyscf_max_abs_ha": b3_dev}


def fmt(x, spec):
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def make_table(rows, test_names):
    head = ("| functional | protocol | test E MAE (mHa) | test E MAE (kcal/mol) | max abs (mHa) | train E MAE (mHa) | "
            "density-driven error (mHa) | ∫Δρ² (e²/Bohr³) | dipole error (D) | B3LYP cycles from ρ_θ (default guess) | "
            "converged | train wall (s) | test MAE of E_θ[ρ_B3LYP] (mHa) |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        t = r["test"]
        cyc = r.get("pyscf_cycles_mean")
        lines.append(
            f"| {r['functional']} | {r['protocol']} | {fmt(t['energy_mae_mha'], '.1f')} | {fmt(t['energy_mae_kcal'], '.1f')} | "
            f"{fmt(t['energy_max_abs_mha'], '.1f')} | {fmt(r['train']['energy_mae_mha'], '.1f')} | "
            f"{fmt(t['density_driven_error_mha'], '.2f')} | {fmt(t['density_l2'], '.2e')} | "
            f"{fmt(t['dipole_error_debye'], '.3f')} | {fmt(cyc, '.1f')} ({fmt(r.get('pyscf_cycles_default_mean'), '.1f')}) | "
            f"{t['n_converged']}/{t['n_molecules']} | {fmt(r.get('train_wall_s'), '.0f')} | "
            f"{fmt(t['energy_at_reference_density_mae_mha'], '.1f')} |")
    return "\n".join(lines)


def plots(out_dir, runs, rows, test_names, e_ref_test):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    models = sorted({r["model"] for r in runs})
    fig, axes = plt.subplots(1, len(models), figsize=(max(6 * len(models), 9), 4.5), squeeze=False)
    for ax, m in zip(axes[0], models):
        for r in runs:
            if r["model"] != m:
                continue
            h = r["history"]
            steps = [x["step"] for x in h]
            ax.semilogy(steps, [np.sqrt(max(x["energy"], 1e-30)) * 1e3 for x in h], "o-",
                        label=f"{r['protocol_label']}: energy RMSE (mHa)")
            lab = r["protocol_label"]
            if r["loss"] == "energy_density":
                ax.semilogy(steps, [x["density"] * 1e3 for x in h], "s--", label=f"{lab}: ∫Δρ² ×10³")
            else:
                if any(x["gradient"] > 0 for x in h):
                    ax.semilogy(steps, [np.sqrt(x["gradient"]) * 1e3 for x in h], "^--", label=f"{lab}: ‖ΔG‖ (mHa)")
                if any(x["hessian"] > 0 for x in h):
                    ax.semilogy(steps, [np.sqrt(x["hessian"]) * 1e3 for x in h], "v:", label=f"{lab}: ‖ΔHV‖ (mHa)")
        ax.set_title(m)
        ax.set_xlabel("Adam step (full batch)")
        ax.legend(fontsize=6)
    fig.suptitle("training curves (train set); energy-density protocols: SCF energy, derivative protocols: "
                 "energy at ρ_B3LYP", fontsize=9)
    fig.tight_layout()
    p = os.path.join(out_dir, "training_curves.png")
    fig.savefig(p, dpi=120)
    plt.close(fig)
    files.append(p)

    # held-out energies: parity (relative to B3LYP) and per-molecule errors
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(test_names))
    trained = list(rows)
    width = 0.8 / max(len(trained), 1)
    for k, r in enumerate(trained):
        errs = [r["test"]["per_molecule"][n]["energy_error_mha"] for n in test_names]
        axes[0].bar(x + k * width - 0.4 + width / 2, errs, width, label=f"{r['functional']} {r['protocol']}")
        pred = [r["test"]["per_molecule"][n]["energy"] for n in test_names]
        axes[1].plot(e_ref_test, pred, "o", label=f"{r['functional']} {r['protocol']}", alpha=0.8)
    axes[0].set_xticks(x, test_names)
    axes[0].set_yscale("symlog", linthresh=10)
    axes[0].set_ylabel("E_θ − E_B3LYP (mHa, symlog)")
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].legend(fontsize=6)
    axes[0].set_title("held-out total-energy errors")
    lo, hi = min(e_ref_test) - 2, max(e_ref_test) + 2
    axes[1].plot([lo, hi], [lo, hi], "k-", lw=0.5)
    axes[1].set_xlabel("E_B3LYP (Ha)")
    axes[1].set_ylabel("E_θ (Ha)")
    axes[1].set_title("held-out parity")
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    p = os.path.join(out_dir, "test_energies.png")
    fig.savefig(p, dpi=120)
    plt.close(fig)
    files.append(p)
    return files


# ----------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.path.join(HERE, "config.toml"))
    parser.add_argument("--quick", action="store_true", help="smoke test (few molecules, 2 steps)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.quick)
    t_wall = time.time()

    import jax
    import jax.random as jr
    import nlxc
    from nlxc import losses
    from nlxc.batch import BucketShape

    out_dir = resolve(cfg, cfg["results_dir"])
    os.makedirs(out_dir, exist_ok=True)
    d = cfg["data"]
    train_names, test_names = list(d["train"]), list(d["test"])
    mols = molecules_by_name()
    timings = {}

    # --- reference data (PySCF B3LYP/def2-SVP, density-fitted, grid level 1)
    t0 = time.time()
    ref_path = resolve(cfg, d["reference_file"])
    os.makedirs(os.path.dirname(ref_path), exist_ok=True)
    dataset = nlxc.data.compute_references([mols[n] for n in train_names + test_names], ref_path,
                                           methods=(d["method"],), basis=d["basis"], grid_level=d["grid_level"])
    timings["references_s"] = time.time() - t0
    e_ref = {n: dataset.entry(n, d["method"]).energy for n in train_names + test_names}
    ref_cycles = {n: dataset.entry(n, d["method"]).scf_iterations for n in train_names + test_names}

    # --- Systems, one padded shape for train and test
    t0 = time.time()
    systems = {n: nlxc.System.from_pyscf(mols[n].to_mole(d["basis"]), grid_level=d["grid_level"])
               for n in train_names + test_names}
    shape = BucketShape.covering(list(systems.values()))
    size = max(len(train_names), len(test_names))
    train_batch = make_batch([systems[n] for n in train_names], shape, size)
    test_batch = make_batch([systems[n] for n in test_names], shape, size)
    train_targets = losses.Targets.from_dataset(train_batch, dataset, train_names, d["method"])
    test_targets = losses.Targets.from_dataset(test_batch, dataset, test_names, d["method"])
    timings["systems_s"] = time.time() - t0
    log(f"padded shape {shape}, batch size {size}; train {train_names}; test {test_names}")

    # --- derivative labels from nlxc's B3LYP at the B3LYP densities (a few direction sets)
    t0 = time.time()
    protocol_names = list(cfg["training"].get("protocols", cfg["protocols"].keys()))
    for pname in protocol_names:
        cfg["protocols"][pname].setdefault("loss", pname)
        cfg["protocols"][pname].setdefault("label", pname)
    reference = nlxc.get_functional(d["method"])
    key = jr.key(cfg["seed"])
    label_sets = {}  # (n_directions, n_direction_sets) -> list of Targets with derivative labels
    for pname in protocol_names:
        pd = cfg["protocols"][pname]
        if pd["loss"] != "derivative":
            continue
        spec = (int(pd["n_directions"]), int(pd["n_direction_sets"]))
        if spec not in label_sets:
            key, *dkeys = jr.split(key, spec[1] + 1)
            label_sets[spec] = [train_targets.with_derivatives(reference, train_batch, key=k, n_directions=spec[0])
                                for k in dkeys]
    # consistency: nlxc's B3LYP orbital gradient at the PySCF density vs PySCF's (≈ 0 both)
    g_diff = float(losses.derivative_loss(reference, train_batch, train_targets, hessian_weight=0.0))
    g_norm = float(losses.derivative_loss(reference, train_batch, dataclasses.replace(
        train_targets, fock_matrix=0.0 * train_targets.fock_matrix), hessian_weight=0.0))
    timings["derivative_labels_s"] = time.time() - t0
    log(f"derivative labels (directions per molecule, sets): {sorted(label_sets)}; at the PySCF B3LYP densities "
        f"mean ‖G_nlxc − G_PySCF‖² = {g_diff:.2e} Ha², mean ‖G_nlxc − 0‖² = {g_norm:.2e} Ha² (both ≈ 0 expected)")

    # --- models x protocols
    evaluate = make_evaluator()
    eval_steps = int(cfg["evaluation"]["scf_max_steps"])
    p_ref_test, p_ref_train = test_targets.density_matrix, train_targets.density_matrix
    runs, rows, densities = [], [], {}
    model_info = {}

    def eval_row(functional, functional_name, protocol):
        t0 = time.time()
        ev_test = jax.tree.map(np.asarray, evaluate(functional, test_batch, p_ref_test, eval_steps))
        ev_train = jax.tree.map(np.asarray, evaluate(functional, train_batch, p_ref_train, eval_steps))
        row = {"functional": functional_name, "protocol": protocol,
               "test": summarise(ev_test, test_names, np.array([e_ref[n] for n in test_names])),
               "train": summarise(ev_train, train_names, np.array([e_ref[n] for n in train_names])),
               "eval_s": time.time() - t0}
        for k in ("test", "train"):
            if row[k]["not_converged"]:
                log(f"WARNING: {functional_name} {protocol}: nlxc SCF not converged on {k} molecules "
                    f"{row[k]['not_converged']}")
        densities[(functional_name, protocol)] = ev_test["density_matrix"]
        rows.append(row)
        log(f"{functional_name:10s} {protocol:9s} test MAE {row['test']['energy_mae_mha']:9.2f} mHa, "
            f"train MAE {row['train']['energy_mae_mha']:9.2f} mHa ({row['eval_s']:.0f} s)")
        return row

    for name in cfg["evaluation"].get("baselines", []):
        eval_row(nlxc.get_functional(name), name.upper(), "baseline")

    run_models = list(cfg["training"].get("models", cfg["models"].keys()))
    for mname, spec in cfg["models"].items():
        key, mkey = jr.split(key)  # split for every model, so a model's initialisation does not depend on the list
        if mname not in run_models:
            continue
        f0, trainable = build_model(spec, mkey)
        model_info[mname] = {**spec, "n_trainable_parameters": count_parameters(f0, trainable)}
        log(f"model {mname}: {model_info[mname]['n_trainable_parameters']} trainable parameters")
        eval_row(f0, mname, "untrained")
        for protocol in protocol_names:
            pcfg = cfg["protocols"][protocol]
            targets_list = ([train_targets] if pcfg["loss"] == "energy_density"
                            else label_sets[(int(pcfg["n_directions"]), int(pcfg["n_direction_sets"]))])
            log(f"training {mname} with {pcfg['label']} ({cfg['training']['steps']} steps, "
                f"lr {spec['learning_rate']})")
            f, info = train(f0, trainable, pcfg["loss"], pcfg, cfg["training"], spec["learning_rate"], train_batch,
                            targets_list)
            if info["skipped_steps"]:
                log(f"WARNING: {len(info['skipped_steps'])} step(s) not applied: {info['skipped_steps']}")
            runs.append({"model": mname, "protocol": protocol, "loss": pcfg["loss"], "protocol_label": pcfg["label"],
                         **info})
            row = eval_row(f, mname, pcfg["label"])
            row["train_wall_s"] = info["wall_s"]

    # --- PySCF B3LYP SCF cycles from the learned densities vs the default guess (test molecules)
    t0 = time.time()
    ecfg = cfg["evaluation"]
    cycles = {}
    from tqdm.auto import tqdm

    for i, n in enumerate(tqdm(test_names, desc="PySCF B3LYP restarts", file=sys.stdout)):
        mol = mols[n].to_mole(d["basis"])
        nao = mol.nao_nr()
        dms = {f"{fn}|{pr}": np.asarray(p[i, 0, :nao, :nao] + p[i, 1, :nao, :nao])
               for (fn, pr), p in densities.items()}
        cycles[n] = pyscf_b3lyp_cycles(mol, dms, d["grid_level"], ecfg["pyscf_conv_tol"], ecfg["pyscf_max_cycle"])
    timings["pyscf_restarts_s"] = time.time() - t0
    for row in rows:
        label = f"{row['functional']}|{row['protocol']}"
        c = [cycles[n][label]["cycles"] for n in test_names]
        row["pyscf_cycles"] = {n: cycles[n][label] for n in test_names}
        row["pyscf_cycles_mean"] = float(np.mean(c))
        row["pyscf_cycles_default_mean"] = float(np.mean([cycles[n]["default"]["cycles"] for n in test_names]))
        row["pyscf_all_converged"] = all(cycles[n][label]["converged"] for n in test_names)
        # the B3LYP energy reached from the learned density must be the reference's
        row["pyscf_max_energy_deviation_ha"] = float(max(abs(cycles[n][label]["energy"] - e_ref[n])
                                                         for n in test_names))

    wall = time.time() - t_wall

    # --- NaN guard
    bad = [(r["functional"], r["protocol"]) for r in rows
           if not all(math.isfinite(r[k]["energy_mae_mha"]) for k in ("test", "train"))]
    if bad:
        log(f"WARNING: non-finite metrics for {bad}")

    table = make_table(rows, test_names)
    import nlxc as _n

    results = {
        "experiment": "distill_b3lyp",
        "quick": cfg["_quick"],
        "config": {k: v for k, v in cfg.items() if not k.startswith("_")},
        "config_path": os.path.abspath(args.config),
        "padded_shape": dataclasses.asdict(shape),
        "batch_size": size,
        "train": train_names, "test": test_names,
        "reference_energies_ha": e_ref,
        "reference_pyscf_cycles_minao": ref_cycles,
        "models": model_info,
        "rows": rows,
        "training_runs": runs,
        "pyscf_b3lyp_cycles": cycles,
        "definitions": {
            "energy_mae": "mean |E_theta[SCF] - E_B3LYP| over converged held-out molecules",
            "density_driven_error": "E_B3LYP[P_theta] - E_B3LYP[P_B3LYP], nlxc's B3LYP (density-fitted, same grid) "
                                    "evaluated at the learned functional's SCF density; >= 0 up to the SCF tolerance",
            "density_l2": "integral (rho_theta - rho_B3LYP)^2 d^3r on the grid (negative weights clipped), e^2/Bohr^3",
            "dipole_error": "|mu_theta - mu_B3LYP| (Debye), both from nlxc.dipole_moment",
            "pyscf_cycles": "mf.cycles of PySCF density-fitted RKS B3LYP (grid level, small_rho_cutoff=0, "
                            "conv_tol as compute_references) from dm0 = P_alpha + P_beta of the learned SCF "
                            "versus the default minao guess",
        },
        "derivative_label_check": {"mean_sq_G_nlxc_minus_G_pyscf": g_diff, "mean_sq_G_nlxc": g_norm},
        "timings_s": {**timings, "total_wall_s": wall},
        "hardware": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                     "jax_devices": [str(x) for x in jax.devices()], "python": platform.python_version(),
                     "jax": jax.__version__, "nlxc": _n.__version__},
    }
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    files = plots(out_dir, runs, rows, test_names, [e_ref[n] for n in test_names])
    log("")
    log(table)
    log("")
    log(f"plots: {files}")
    log(f"wall time {wall:.0f} s ({wall / 60:.1f} min); results in {out_dir}")
    return results


if __name__ == "__main__":
    main()
