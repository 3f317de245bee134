"""What a job's GPU request means, as pure functions the broker (central) and the agent (pilot) share, so the GPUs
central counts for a job are the GPUs the agent then gives it (docs/gpus.md).

A request has a count and up to four terms; a GPU answers to the request when it answers to every term given:
- `vendor` (GPUVendor): the GPU's vendor, equal ignoring case ("NVIDIA", "AMD", "Intel").
- `name` (GPU = "MI50"): a substring, ignoring case, of the GPU's vendor and model ("AMD Vega 20 [Radeon Pro
  VII/Radeon Instinct MI50 32GB]"). A GPU whose model the node could not name answers to its vendor only.
- `model` (GPU = "=Radeon Instinct MI50 32GB"): one of the model's names, whole, ignoring case and runs of spaces.
  A model's names are what pci.ids calls it, the part in brackets, and each name the brackets list split at " / "
  or "/": "Vega 20 [Radeon Pro VII/Radeon Instinct MI50 32GB]" is also "Radeon Pro VII" and "Radeon Instinct MI50
  32GB", but not "MI50". A listed name that starts with a number takes the first name's words before its number,
  as pci.ids shortens them: "Navi 48 [Radeon RX 9070/9070 XT/9070 GRE]" is also "Radeon RX 9070 XT".
- `arch` (GPUArch): the GPU's architecture, equal ignoring case: NVIDIA's "sm_80", AMD's "gfx906", Intel's
  "Xe-HPC". A GPU whose architecture the node does not know (null) never answers to an arch.
"""

from __future__ import annotations

import re
from typing import Any, List, Optional, Sequence

#: The most GPUs a job may ask for: central's bound on a site map's GPU list (central/bounds.py MAX_GPUS), which a
#: larger request could never match.
MAX_GPU_COUNT = 256
#: A GPU term's longest text: a model name as pci.ids writes them is under 100 characters; the column holds 255.
MAX_GPU_TEXT = 255
#: Vendors are short names ("NVIDIA", "AMD", "Intel", as the node's enumeration writes them).
MAX_GPU_VENDOR = 64
VENDOR_FORM = re.compile(r"[A-Za-z0-9][A-Za-z0-9 .,&_-]{0,63}")
#: The GPU architectures a job may name: NVIDIA's compute capability as CUDA's compilers write it (sm_80, sm_90a,
#: sm_100), AMD's LLVM processor names (gfx906, gfx90a, gfx942, gfx1100, gfx1201), Intel's Xe generations (Xe-LP,
#: Xe-HPG, Xe-HPC, Xe2-HPG). Anything else is a typo no node could answer to, refused at submit.
ARCH_FORM = re.compile(r"sm_[1-9][0-9]{1,2}[af]?|gfx[0-9]{1,2}[0-9a-f]{2}|xe[0-9]?-(?:lp|lpg|hpg|hpc)", re.IGNORECASE)
ARCH_EXPECTED = 'an NVIDIA "sm_NN", an AMD "gfxNNN" or an Intel "Xe-LP/LPG/HPG/HPC" architecture'
MAX_GPU_ARCH = 16

_SPACES = re.compile(r"\s+")
_BRACKETS = re.compile(r"\[([^\[\]]+)\]")


def _folded(text: str) -> str:
    return _SPACES.sub(" ", text).strip().casefold()


def model_names(model: str) -> List[str]:
    """The names a model answers to whole (folded): its full name, each bracketed part, each alternative in one,
    and an alternative that starts with a number also under the first one's words before its number, as pci.ids
    abbreviates them ("Radeon RX 9070/9070 XT" is also "Radeon RX 9070 XT")."""
    names = [_folded(model)]
    for inside in _BRACKETS.findall(model):
        names.append(_folded(inside))
        parts = [p for p in re.split(r"\s*/\s*", inside) if p.strip()]
        first_number = re.search(r"(?:^|\s)\d", parts[0]) if parts else None
        prefix = parts[0][:first_number.start()].strip() if first_number else ""
        for p in parts:
            names.append(_folded(p))
            if prefix and p[:1].isdigit():
                names.append(_folded(f"{prefix} {p}"))
    return names


def arch_problem(arch: str) -> Optional[str]:
    """Why `arch` cannot be a GPU architecture (None: it can)."""
    if len(arch) > MAX_GPU_ARCH or not ARCH_FORM.fullmatch(arch):
        return f"must be {ARCH_EXPECTED}, got {arch[:40]!r}"
    return None


def vendor_problem(vendor: str) -> Optional[str]:
    if not VENDOR_FORM.fullmatch(vendor):
        return f"must be a vendor name such as \"NVIDIA\", \"AMD\" or \"Intel\" (at most {MAX_GPU_VENDOR} " \
               f"letters, digits, spaces and .,&_-), got {vendor[:40]!r}"
    return None


def answers(gpu_vendor: str, gpu_model: Optional[str], gpu_arch: Optional[str], *, name: Optional[str] = None,
            model: Optional[str] = None, vendor: Optional[str] = None, arch: Optional[str] = None) -> bool:
    """Whether one GPU (its vendor, model or None, arch or None) answers to every term of a request."""
    if vendor and gpu_vendor.casefold() != vendor.casefold():
        return False
    if arch and (gpu_arch is None or gpu_arch.casefold() != arch.casefold()):
        return False
    if name:
        n = name.casefold()
        if n not in f"{gpu_vendor} {gpu_model or ''}".casefold() and n not in gpu_vendor.casefold():
            return False
    if model and (gpu_model is None or _folded(model) not in model_names(gpu_model)):
        return False
    return True


def request_terms(req: Any) -> str:
    """The terms of a request (an object with name, model, vendor, arch) in JDL words, for traces and `why`:
    'vendor AMD, arch gfx906, model "=Radeon Instinct MI50 32GB"'; "" when it asks only a count."""
    parts = []
    if getattr(req, "vendor", None):
        parts.append(f"vendor {req.vendor}")
    if getattr(req, "arch", None):
        parts.append(f"arch {req.arch}")
    if getattr(req, "name", None):
        parts.append(f"model ~ {req.name!r}")
    if getattr(req, "model", None):
        parts.append(f"model = {req.model!r}")
    return ", ".join(parts)


def pick(free: Sequence[Any], count: int, arch_of: Any, **terms: Optional[str]) -> Optional[List[Any]]:
    """The first `count` of `free` GPUs (objects with vendor and model; `arch_of(gpu)` their arch) answering to
    `terms`, or None when fewer do."""
    fitting = [g for g in free if answers(g.vendor, g.model, arch_of(g), **terms)]
    return fitting[:count] if len(fitting) >= count else None


__all__ = ["ARCH_EXPECTED", "MAX_GPU_COUNT", "MAX_GPU_TEXT", "answers", "arch_problem", "model_names", "pick",
           "request_terms", "vendor_problem"]
