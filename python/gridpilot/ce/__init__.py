"""The computing element (`gridpilot ce`): submits pilots to a site's batch system when central has work for it.

backend.py is the one interface (submit, states, remove); slurm.py, htcondor.py, local.py and arc.py (remote ARC
CEs through REST) implement it;
planning.py is the arithmetic of how many to submit; script.py writes each pilot's start-up script and token file;
factory.py is the loop; settings.py its configuration; reach.py tracks whether central answers (backoff, outage
log lines); stats.py counts what the CE did, metrics.py serves those counts as Prometheus /metrics; command.py is
`gridpilot ce`.
"""

from __future__ import annotations

from gridpilot.ce.backend import BatchBackend, PilotSubmission, Resources
from gridpilot.ce.settings import CESettings


def make_backend(settings: CESettings, ce: str) -> BatchBackend:
    """The configured back end, bound to this CE. BatchError when its tools are missing."""
    if settings.backend == "slurm":
        from gridpilot.ce.slurm import SlurmBackend

        return SlurmBackend(ce, partition=settings.slurm_partition, account=settings.slurm_account,
                            uid=settings.pilot_user, extra_args=settings.slurm_args)
    if settings.backend == "htcondor":
        from gridpilot.ce.htcondor import HTCondorBackend

        return HTCondorBackend(ce, schedd=settings.htcondor_schedd, extra=settings.htcondor_submit)
    if settings.backend == "arc":
        from gridpilot.ce.arc import ArcBackend, arc_ce_from_settings

        ces = [arc_ce_from_settings(raw, settings.arc_ce_shapes(i)) for i, raw in enumerate(settings.arc_ces)]
        return ArcBackend(ces, cert=settings.arc_cert, key=settings.arc_key, ca_dir=settings.arc_ca_dir,
                          ca_file=settings.arc_ca_file, token_file=settings.arc_token_file,
                          timeout_s=settings.arc_timeout, backoff_s=settings.arc_backoff,
                          backoff_max_s=settings.arc_backoff_max, diagnose_max=settings.arc_diagnose_max)
    from gridpilot.ce.local import LocalBackend

    return LocalBackend(user=settings.pilot_user)


__all__ = ["BatchBackend", "CESettings", "PilotSubmission", "Resources", "make_backend"]
