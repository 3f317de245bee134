"""A job's resource plots over time. (Skeleton: none yet.)"""

from __future__ import annotations

from typing import Any, Dict, List

from gridpilot.central.ui.charts import Chart


def job_plots(job: Dict[str, Any], trace: List[Dict[str, Any]]) -> List[Chart]:
    return []
