"""The tower (`gridpilot tower`): the aCT "native" mode, for sites whose worker nodes have no network.

A central-side service holding one tower token per site it serves. Each cycle it matches jobs for those sites,
keeps each in its own SQLite database before doing anything else with it, stages the inputs from storage into the
job's ARC session (or lets ARC stage them from an SE the ARC CE reaches), submits them in bulk as ARC jobs whose
executable is `<install_path>/bin/gridpilot offline .` (pilot/offline.py, run on the node with no network),
follows them through A-REX's REST interface, downloads result.json, the outputs and the pilot log, uploads each
output to its storage element and verifies size and checksum ON the element against result.json before
registering it with the job's token, publishes the pilot log, reports states, trace lines, the ARC job id and the
log's URL to central in bulk (POST /api/v1/reports), and cleans the ARC job.

    settings.py   the configuration (sites, ARC CEs, limits), through gridpilot.settings_loader
    db.py         the tower's own state: one row per job it holds, and the outbox of reports to central
    xrsl.py       the ARC job description of a job
    jobfiles.py   job.json for the offline runner, and the inputs fetched from storage for it
    results.py    result.json checked field by field, and the outputs verified on their SE before registration
    service.py    the cycle: match, stage, submit, follow, collect, publish, report, clean
    command.py    `gridpilot tower`

Layer 2 (beside pilot/): it speaks to central through client.py, to storage through storage/, to ARC through
arc/; it never imports central/ or pilot/ (the offline runner runs on the node, as a command).
"""
