"""How the JobRunner shares its slot: cores between concurrent 1-core and multi-core jobs, and the node's GPUs, each
given to one job at a time. Real runner, agents, wrappers and payloads against a real central on SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from support.pilot import STOPPED_OR_DONE, Pilot, payload_jdl
from support.sysfs import H100_UUID, NO_PCI_IDS, PCI_IDS, UUID_NOT_YET, add_device, nvidia_information

Interval = Tuple[float, float]


def held(pilot: Pilot, job_id: int, start: str = "ASSIGNED") -> Interval:
    """From central's state times: when the job took its slot share (`start`) and when it ended."""
    states = pilot.states(job_id)
    begin = next(ts for ts, s in states if s == start)
    return begin, states[-1][0]


def most_at_once(intervals: List[Tuple[Interval, int]]) -> int:
    """The largest sum of weights of intervals open at the same moment."""
    events = sorted([(b, w) for (b, _), w in intervals] + [(e, -w) for (_, e), w in intervals],
                    key=lambda ev: (ev[0], ev[1]))  # at a tie, an end (negative) before a start
    now = best = 0
    for _, w in events:
        now += w
        best = max(best, now)
    return best


def test_one_core_jobs_run_together_and_a_two_core_job_waits_for_two_free_cores(pilot: Pilot):
    singles = [pilot.submit(payload_jdl("sleep", 10), name=f"single-{i}") for i in range(4)]
    pilot.start(cores=4)
    for j in singles:
        pilot.wait_state(j, ["RUNNING"], timeout=60)
    # Only now: the runner's 4 cores are all taken, so this one has to wait until two are free again.
    double = pilot.submit(payload_jdl("sleep", 1, CPUCores=2), name="double")
    final = pilot.wait_final(singles + [double], timeout=90)
    assert [j["state"] for j in final] == ["DONE"] * 5, "\n".join(pilot.describe(j["id"]) for j in final)

    running = [held(pilot, j, "RUNNING") for j in singles]
    assert most_at_once([(i, 1) for i in running]) == 4, running
    slots = [(held(pilot, j), 1) for j in singles] + [(held(pilot, double), 2)]
    assert most_at_once(slots) <= 4, slots
    ends = sorted(end for (_, end), _ in slots[:4])
    assert held(pilot, double)[0] >= ends[1], (slots, "the 2-core job must wait for the second single to end")
    assert "NOCPUS" in pilot.trace_text(double)
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()


GPUS = ["0000:41:00.0", "0000:81:00.0", "0000:c1:00.0"]
#: How CUDA must be told each GPU in a job without a container (all of the node's GPUs reachable): the third one's
#: driver gives its UUID, the first two are not initialised yet (no UUID), so their index in PCI bus order.
CUDA_NAMES = {GPUS[0]: "0", GPUS[1]: "1", GPUS[2]: H100_UUID}


def fake_gpu_node(root: Path) -> Path:
    """A sysfs tree with three NVIDIA GPUs (3D controllers) and, as on real nodes, a non-GPU function beside one;
    the NVIDIA driver's /proc entries beside it."""
    for minor, address in enumerate(GPUS):
        add_device(root, address, "0x030200", "0x10de", "0x2321", "0", "nvidia")
        nvidia_information(root, address, CUDA_NAMES[address] if address == GPUS[2] else UUID_NOT_YET, minor)
    add_device(root, "0000:41:00.1", "0x040300", "0x10de", "0x22bc", "0", "snd_hda_intel")
    return root / "sys"


def gpu_env(pilot: Pilot, job_id: int) -> Dict[str, str]:
    (payload,) = pilot.job_processes(job_id)
    env = payload.environ()
    return {k: env.get(k, "") for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "ROCR_VISIBLE_DEVICES",
                                         "GRIDPILOT_GPUS")}


def test_gpus_are_given_to_one_job_at_a_time(pilot: Pilot):
    sysfs = fake_gpu_node(pilot.grid.state_dir / "node")
    a = pilot.submit(payload_jdl("sleep", 10, GPU=1), name="gpu-a")
    # By model: the pilot names its GPUs through the pci.ids it is given (never the host's, which may have none).
    b = pilot.submit(payload_jdl("sleep", 10, GPU="H100"), name="gpu-b")
    pilot.start(cores=4, sysfs=str(sysfs), pci_ids=str(PCI_IDS))
    pilot.wait_state(a, ["RUNNING"])
    pilot.wait_state(b, ["RUNNING"])
    env_a, env_b = gpu_env(pilot, a), gpu_env(pilot, b)
    for env in (env_a, env_b):
        # GRIDPILOT_GPUS keeps the PCI address; CUDA gets what it accepts (a UUID or an index, never an address).
        assert env["GRIDPILOT_GPUS"] in GPUS and env["CUDA_VISIBLE_DEVICES"] == CUDA_NAMES[env["GRIDPILOT_GPUS"]], env
        assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and env["ROCR_VISIBLE_DEVICES"] == ""
    assert env_a["GRIDPILOT_GPUS"] != env_b["GRIDPILOT_GPUS"]
    # Two GPUs are taken, one is free: a job asking for two must wait for one of a and b to end.
    c = pilot.submit(payload_jdl("sleep", 3, GPU=2), name="gpu-c")
    pilot.wait_state(c, ["RUNNING"], timeout=60)
    both = gpu_env(pilot, c)
    env_c = both["GRIDPILOT_GPUS"].split(",")
    assert len(env_c) == 2 and set(env_c) <= set(GPUS), env_c
    assert both["CUDA_VISIBLE_DEVICES"] == ",".join(CUDA_NAMES[g] for g in sorted(env_c)), both
    final = pilot.wait_final([a, b, c], timeout=60)
    assert [j["state"] for j in final] == ["DONE"] * 3, "\n".join(pilot.describe(j["id"]) for j in final)
    first_end = min(held(pilot, a)[1], held(pilot, b)[1])
    assert held(pilot, c)[0] >= first_end
    # No device was ever in two jobs at once: c's devices exclude those of whichever of a, b still ran.
    for other, env in ((a, env_a), (b, env_b)):
        if held(pilot, other)[1] > held(pilot, c)[0]:
            assert env["GRIDPILOT_GPUS"] not in env_c, (env, env_c)
    trace_a = pilot.trace_text(a)
    assert f"GPUs given to this job: {env_a['GRIDPILOT_GPUS']} (NVIDIA GH100 [H100L 94GB])" in trace_a
    assert "3 GPU(s): 3x NVIDIA GH100 [H100L 94GB]" in pilot.runner_log()
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()


def test_gpus_without_a_model_name_take_jobs_asking_a_count_or_a_vendor(pilot: Pilot):
    """A node without pci.ids (no pciutils, no hwdata) knows its GPUs' vendor and PCI ids but not their model: its
    GPUs still run jobs asking for a number of GPUs or a vendor; a job asking for a model waits for a node that can
    name it. The same on a host with and without pci.ids: the pilot is pointed at a file that does not exist."""
    sysfs = fake_gpu_node(pilot.grid.state_dir / "node")
    by_count = pilot.submit(payload_jdl("sleep", 1, GPU=1), name="gpu-count")
    by_vendor = pilot.submit(payload_jdl("sleep", 1, GPU="nvidia"), name="gpu-vendor")
    by_model = pilot.submit(payload_jdl("sleep", 1, GPU="H100"), name="gpu-model")
    pilot.start(cores=4, sysfs=str(sysfs), pci_ids=NO_PCI_IDS)
    final = pilot.wait_final([by_count, by_vendor], timeout=90)
    assert [j["state"] for j in final] == ["DONE"] * 2, "\n".join(pilot.describe(j["id"]) for j in final)
    for job_id in (by_count, by_vendor):
        assert "(NVIDIA 10de:2321, model unknown)" in pilot.trace_text(job_id), pilot.describe(job_id)
    # The runner leaves after its empty matches: the job asking a model was never given to this node.
    assert pilot.wait_runner_exit(timeout=60) == 0, pilot.runner_log()
    assert pilot.job(by_model)["state"] == "WAITING", pilot.describe(by_model)
    log = pilot.runner_log()
    assert "3 GPU(s): 3x NVIDIA 10de:2321, model unknown; 3 without a model name, not found in pci_ids " \
           f"{NO_PCI_IDS}: jobs asking for a GPU model do not match them" in log, log
    assert "bad_site_map" not in log, log
    pilot.assert_clean()


def test_a_slot_ends_with_its_agent_token_so_no_job_taken_outlives_the_token(pilot: Pilot):
    """A pilot whose token expires before its slot would (it waited in its queue longer than its CE planned for)
    offers the broker only the time its token leaves, less the wind-down and the last reports."""
    grid = pilot.grid
    token = grid.admin.mint_token("agent", "pilot/short-token", site=grid.site, ce=grid.ce, ttl_s=400)
    short = grid.state_dir / "short.token"
    short.write_text(token)
    short.chmod(0o600)
    # 400 s of token less 100 s of wind-down and 120 s for the reports: 180 s to offer, whatever the slot's 3600 s.
    too_long = pilot.submit(payload_jdl("sleep", 1, TTL=300), name="ttl-300")
    fits = pilot.submit(payload_jdl("sleep", 1, TTL=150), name="ttl-150")
    pilot.start(cores=1, slot_ttl=3600, token_file=str(short), drain_grace=100)
    (done,) = pilot.wait_final([fits], timeout=60)
    assert done["state"] == "DONE", pilot.describe(fits)
    assert pilot.wait_runner_exit(60) == 0, "the runner ends after its empty matches"
    assert pilot.job(too_long)["state"] == "WAITING", pilot.describe(too_long)
    log = pilot.runner_log()
    assert "(ends with the agent token: it expires before the slot would)" in log, log[-3000:]
    pilot.assert_clean()
