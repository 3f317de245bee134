"""GPU brokering, pure (issue 20, section 3; docs/gpus.md): the table of tests/support/gpucases.py through the
broker's fit (central) and the agent's claim (pilot), which must agree; the GPU terms of the JDL and their bad
values; the model names an exact request answers to."""

from __future__ import annotations

from dataclasses import asdict
from types import SimpleNamespace
from typing import Any, Dict

import pytest
from support.central import jdl, site_map
from support.gpucases import CASES, GpuCase, case_ids

from gridpilot.central import broker, offers
from gridpilot.errors import JdlError
from gridpilot.isolation import gpus as isolation_gpus
from gridpilot.jdl import GpuRequest, gpus, parse_job


def row(keys: Dict[str, Any]) -> Any:
    """The job as the broker reads it from its row: JobNeeds' fields and the user."""
    return SimpleNamespace(**asdict(broker.needs_of(parse_job(jdl(**keys)))), user="alice")


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_gpu_table(case: GpuCase) -> None:
    site = broker.parse_site_map(site_map(gpus=case.gpus))
    found = broker.misfit_clause(row(case.jdl), site)
    assert (found is None) is case.matches, found
    if found is not None:
        assert found[0] == "gpus"
        for words in case.why:
            assert words in found[1], (words, found[1])
    # The agent then gives the job GPUs by the same terms: exactly when the broker matched, as many as asked.
    job = parse_job(jdl(**case.jdl))
    free = [SimpleNamespace(vendor=g["vendor"], model=g.get("model"), pci_address=g["pci_address"],
                            arch=g.get("arch")) for g in case.gpus]
    given = isolation_gpus.claim(job, free, arch_of=lambda g: g.arch)
    assert (given is not None) is case.matches
    if given is not None:
        assert len(given) == (job.gpu.count if job.gpu else 0)


def test_the_table_covers_what_the_issue_asks() -> None:
    """Vendor, substring, exact, arch, count against free, unknown model, unknown arch; both outcomes of each."""
    assert len(CASES) >= 12
    names = " ".join(c.name for c in CASES)
    for term in ("vendor", "substring", "exact", "arch", "count", "unknown-model", "unknown-arch"):
        assert term in names, term
    assert {c.matches for c in CASES} == {True, False}


def test_the_gpu_terms_of_the_jdl() -> None:
    def req(**keys: Any) -> Any:
        return parse_job(jdl(**keys)).gpu

    assert req(GPU="MI50") == GpuRequest(1, "MI50")
    assert req(GPU="= Radeon Instinct MI50 32GB") == GpuRequest(1, model="Radeon Instinct MI50 32GB")
    assert req(GPUVendor="AMD") == GpuRequest(1, vendor="AMD")
    assert req(GPUArch="gfx90a") == GpuRequest(1, arch="gfx90a")
    assert req(GPU="MI50", GPUCount=4, GPUArch="gfx906") == GpuRequest(4, "MI50", arch="gfx906")
    assert req(GPUCount=2) == GpuRequest(2)
    assert req(GPU=2, GPUCount=2) == GpuRequest(2)
    assert req(GPUCount=0, GPUVendor="AMD") is None and req() is None
    needs = broker.needs_of(parse_job(jdl(GPU="=Instinct MI210", GPUVendor="AMD", GPUArch="gfx90a")))
    assert (needs.gpus, needs.gpu_name, needs.gpu_model, needs.gpu_vendor, needs.gpu_arch) == (
        1, None, "Instinct MI210", "AMD", "gfx90a")


@pytest.mark.parametrize("keys, words", [
    (dict(GPU=-1), "GPU must be at least 0"),
    (dict(GPUCount=-2), "GPUCount must be at least 0"),
    (dict(GPUCount="two"), "GPUCount must be a whole number of GPUs, got 'two'"),
    (dict(GPU=2, GPUCount=3), "GPUCount = 3 and GPU = 2 ask for different numbers of GPUs"),
    (dict(GPU="="), 'GPU = "=" names no model'),
    (dict(GPUArch="sm80"), 'GPUArch must be an NVIDIA "sm_NN", an AMD "gfxNNN" or an Intel'),
    (dict(GPUArch="gfx90z"), "got 'gfx90z'"),
    (dict(GPUArch="Xe-HPX"), "GPUArch must be"),
    (dict(GPUArch="sm_" + "9" * 40), "GPUArch must be"),
    (dict(GPUVendor="NVIDIA;rm"), "GPUVendor must be a vendor name"),
    (dict(GPUVendor="V" * 65), "GPUVendor must be a vendor name"),
])
def test_bad_gpu_terms_are_named_with_their_line(keys: Dict[str, Any], words: str) -> None:
    with pytest.raises(JdlError) as e:
        parse_job(jdl(**keys))
    assert words in e.value.message, e.value.message
    assert e.value.line == 1 + len(keys)  # the last key written is the one named


@pytest.mark.parametrize("arch", ["sm_70", "sm_90a", "sm_100", "SM_80", "gfx906", "gfx90a", "gfx942", "gfx1100",
                                  "gfx1201", "Xe-HPC", "xe-hpg", "Xe2-HPG", "Xe-LP"])
def test_architectures_a_job_may_name(arch: str) -> None:
    assert gpus.arch_problem(arch) is None


def test_an_exact_model_answers_to_each_of_its_names_whole() -> None:
    model = "Vega 20 [Radeon Pro VII/Radeon Instinct MI50 32GB]"
    assert gpus.model_names(model) == ["vega 20 [radeon pro vii/radeon instinct mi50 32gb]",
                                       "radeon pro vii/radeon instinct mi50 32gb", "radeon pro vii",
                                       "radeon instinct mi50 32gb"]
    caicos = "Caicos [Radeon HD 6450/7450/8450 / R5 230 OEM]"
    assert {"r5 230 oem", "radeon hd 6450", "radeon hd 7450", "7450"} <= set(gpus.model_names(caicos))
    assert gpus.answers("AMD", model, "gfx906", model="Radeon  Instinct MI50 32GB")
    assert not gpus.answers("AMD", model, "gfx906", model="Radeon Instinct MI50")
    assert not gpus.answers("AMD", None, "gfx906", model="Radeon Instinct MI50 32GB")


def test_site_map_gpu_fields_are_checked() -> None:
    ok = broker.parse_site_map(site_map(gpus=[{"vendor": "AMD", "arch": "gfx906", "memory_mb": 32768}]))
    assert (ok.gpus[0].arch, ok.gpus[0].memory_mb) == ("gfx906", 32768.0)
    for bad, field in (({"vendor": "AMD", "arch": 906}, "gpus[0].arch"),
                       ({"vendor": "AMD", "arch": "gfx 906"}, "gpus[0].arch"),
                       ({"vendor": "AMD", "arch": "g" * 33}, "gpus[0].arch"),
                       ({"vendor": "AMD", "memory_mb": -1}, "gpus[0].memory_mb"),
                       ({"vendor": "AMD", "memory_mb": "32GB"}, "gpus[0].memory_mb"),
                       ({"vendor": "AMD", "memory_mb": True}, "gpus[0].memory_mb")):
        with pytest.raises(broker.SiteMapError) as e:
            broker.parse_site_map(site_map(gpus=[bad]))
        assert e.value.field == field and field in str(e.value)
    attrs = broker.site_attributes(ok)
    assert attrs["GPUArchs"] == ["gfx906"]


def test_slots_whose_gpus_differ_only_by_architecture_are_two_kinds_for_why():
    """`gridpilot why` keeps the last offer of each kind of slot: a gfx906 and a gfx90a slot of one site answer
    GPUArch differently, so neither may hide the other; a GPU without an architecture keeps its old kind."""
    def shape(**gpu: object) -> str:
        return offers.shape_of(broker.parse_site_map(site_map(gpus=[dict({"vendor": "AMD", "model": "MI50"}, **gpu)])))

    assert shape(arch="gfx906") != shape(arch="gfx90a")
    assert shape(arch="gfx906") == shape(arch="gfx906", memory_mb=32768)
    assert shape() == offers.shape_of(broker.parse_site_map(site_map(gpus=[{"vendor": "AMD", "model": "MI50"}])))
