"""Functionals by name, following PySCF's names (private)."""

from __future__ import annotations

from .._errors import InputError
from . import gga, lda, mgga
from ._base import AbstractFunctional, SemilocalSum
from .hybrid import B3LYP, PBE0, ExactExchange


def _semilocal_by_libxc_id() -> dict[int, type]:
    return {
        1: lda.SlaterExchange,
        7: lda.VWN5Correlation,
        8: lda.VWNRPACorrelation,
        12: lda.PW92Correlation,
        101: gga.PBEExchange,
        130: gga.PBECorrelation,
        106: gga.B88Exchange,
        131: gga.LYPCorrelation,
        497: mgga.R2SCANExchange,
        498: mgga.R2SCANCorrelation,
        **({263: mgga.SCANExchange, 267: mgga.SCANCorrelation} if hasattr(mgga, "SCANExchange") else {}),
    }


def get_functional(name: str) -> AbstractFunctional:
    """The nlxc functional for a PySCF/libxc functional name.

    Names are parsed by PySCF (`pyscf.dft.libxc.parse_xc`), so `"lda"`, `"svwn"`, `"pbe"`,
    `"blyp"`, `"b3lyp"`, `"b3lyp5"`, `"pbe0"`, `"r2scan"`, `"hf"` and linear combinations such as
    `"0.5*HF + 0.5*B88, LYP"` mean exactly what they mean in PySCF, as long as every libxc
    component is implemented in nlxc (see `nlxc.xc.available()`).

    **Returns:** an [`AbstractFunctional`][nlxc.xc.AbstractFunctional]: a
    [`SemilocalSum`][nlxc.xc.SemilocalSum] for semilocal functionals, or that plus
    [`ExactExchange`][nlxc.xc.ExactExchange] for hybrids; `"b3lyp"` and `"pbe0"` give the
    [`B3LYP`][nlxc.xc.B3LYP] and [`PBE0`][nlxc.xc.PBE0] modules.

    **Raises:** [`nlxc.InputError`][] for an unknown name, a range-separated functional, or a
    libxc component nlxc does not implement.
    """
    from pyscf.dft import libxc

    key = str(name).strip()
    if not key:
        raise InputError("empty functional name")
    try:
        (hyb, alpha, omega), terms = libxc.parse_xc(key)
    except Exception as err:
        raise InputError(f"unknown functional {name!r}") from err
    if omega != 0:
        raise InputError(f"range-separated functional {name!r} is not supported yet")
    known = _semilocal_by_libxc_id()
    parts, coefficients = [], []
    special: list[AbstractFunctional] = []
    for fid, coef in terms:
        fid = int(fid)
        if fid == 402 and coef == 1:
            special.append(B3LYP())
        elif fid == 406 and coef == 1:
            special.append(PBE0())
        elif fid in known:
            parts.append(known[fid]())
            coefficients.append(float(coef))
        else:
            raise InputError(
                f"functional {name!r} needs libxc component {libxc.xc_name(fid) if hasattr(libxc, 'xc_name') else fid} "
                f"(ID {fid}), which nlxc does not implement"
            )
    out: list[AbstractFunctional] = list(special)
    if parts:
        out.append(SemilocalSum(coefficients=coefficients, terms=tuple(parts)))
    if hyb != 0:
        out.append(ExactExchange(float(hyb)))
    if len(out) == 1:
        return out[0]
    result = out[0]
    for f in out[1:]:
        result = result + f
    return result


def available() -> list[str]:
    """Short names accepted by [`get_functional`][nlxc.xc.get_functional] that nlxc fully implements."""
    return ["lda", "svwn", "pbe", "blyp", "b3lyp", "b3lyp5", "pbe0", "r2scan", "hf"]
