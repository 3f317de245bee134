"""What the tests share and are not tests themselves: real servers (PostgreSQL, XRootD, Slurm), process trees,
local grids, the payload the pilot tests run, and the paths of the repository. Imported as `support.<module>`
(pyproject.toml puts tests/ on sys.path; the benches insert it themselves)."""
