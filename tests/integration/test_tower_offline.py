"""The tower's side of the offline runner's contract, with both real: the job.json the tower writes is run by
`gridpilot offline` (a process of this installation, no ARC between them), and the result.json it writes passes the
tower's checks; its output is then uploaded to central's storage element, verified there against result.json and
registered with the job's token at a real central. A result.json whose output was changed after the run is never
registered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from gridpilot.storage.checksum import digest_file
from gridpilot.testing import SE_NAME, LocalGrid
from gridpilot.tower import jobfiles, results

JDL = """\
Executable = "/bin/sh";
Arguments = "-c 'tr a-z A-Z < input.txt > upper.txt'";
InputFile = { "LF:/gridpilot/towertest/input.txt" };
OutputFile = { "upper.txt@disk=1" };
CPUCores = 1;
MemorySize = "512MB";
TTL = 300;
"""


def _run_offline(job_dir: Path) -> None:
    got = subprocess.run([sys.executable, "-m", "gridpilot", "offline", str(job_dir), "--json"], capture_output=True,
                         text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-3000:]


def _matched(grid: LocalGrid, tmp: Path) -> Dict[str, Any]:
    source = tmp / "input.txt"
    source.write_text("hello from the tower\n")
    grid.register_local_file(source, "/gridpilot/towertest/input.txt")
    job_id = grid.user.submit(JDL)
    agent = grid.central.client(grid.admin.mint_token("agent", "tower-test", site=grid.site, ce=grid.ce))
    job: Optional[Dict[str, Any]] = agent.match({"ttl": 86400, "cores": 1, "memory_mb": 4000, "node": "n1"})
    assert job is not None and job["id"] == job_id
    return job


def _stage(grid: LocalGrid, job: Dict[str, Any], job_dir: Path) -> None:
    from gridpilot.jdl import parse_job

    job_dir.mkdir()
    with grid.central.client(job["token"]) as client:
        prepared = jobfiles.prepare_inputs(parse_job(job["jdl"]), job_dir, grid_registry(grid),
                                           jobfiles.JobCatalogue(client), [SE_NAME], arc_staging=False)
    assert prepared.uploads == ["input.txt"] and (job_dir / "input.txt").read_text() == "hello from the tower\n"
    jobfiles.write_job_json(job_dir, jobfiles.job_json(
        job_id=job["id"], resubmission=job["resubmission"], jdl=job["jdl"], user=job["user"], site=grid.site,
        ce=grid.ce, inputs=prepared.entries, output_dir=job.get("output_dir")))


def grid_registry(grid: LocalGrid) -> Any:
    from gridpilot.storage import Registry

    return Registry([grid.se])


def test_the_runner_reads_the_towers_job_json_and_the_tower_registers_its_output(tmp_path: Path):
    with LocalGrid(tmp_path / "grid") as grid:
        job = _matched(grid, tmp_path)
        job_dir = tmp_path / "job"
        _stage(grid, job, job_dir)
        _run_offline(job_dir)
        result = results.parse_result((job_dir / "result.json").read_bytes(), job_id=job["id"],
                                      resubmission=job["resubmission"])
        assert result.final_state == "SAVING" and [s.state for s in result.states][-1] == "SAVING"
        (out,) = result.outputs
        assert out.lfn.endswith("/upper.txt")
        with grid.central.client(job["token"]) as client:
            def register(lfn: str, size: int, adler32: str, md5: Optional[str], se: str, pfn: str) -> None:
                client.register_file(lfn=lfn, size=size, adler32=adler32, md5=md5, se=se, pfn=pfn, job_id=job["id"])
            published = results.publish_outputs(result.outputs, job_dir, grid_registry(grid), [SE_NAME], register)
        assert published.state.name == "DONE", published.trace
        entry = grid.admin.lookup_file(out.lfn)
        (replica,) = entry["replicas"]
        copy = Path(replica["pfn"][len("file://"):])
        assert copy.read_text() == "HELLO FROM THE TOWER\n"
        assert (entry["size"], entry["adler32"]) == (digest_file(copy).size, out.adler32)


def test_an_output_changed_after_the_run_is_not_registered(tmp_path: Path):
    with LocalGrid(tmp_path / "grid") as grid:
        job = _matched(grid, tmp_path)
        job_dir = tmp_path / "job"
        _stage(grid, job, job_dir)
        _run_offline(job_dir)
        result = results.parse_result((job_dir / "result.json").read_bytes(), job_id=job["id"],
                                      resubmission=job["resubmission"])
        (out,) = result.outputs
        (job_dir / out.name).write_text("HELLO FROM SOMEONE ELSE\n")
        with grid.central.client(job["token"]) as client:
            def register(lfn: str, size: int, adler32: str, md5: Optional[str], se: str, pfn: str) -> None:
                client.register_file(lfn=lfn, size=size, adler32=adler32, md5=md5, se=se, pfn=pfn, job_id=job["id"])
            published = results.publish_outputs(result.outputs, job_dir, grid_registry(grid), [SE_NAME], register)
        assert published.state.name == "ERROR_SV" and "differs from result.json" in published.failed[0][1]
        files = grid.admin.job_files(job["id"])["files"]
        assert not files, files
