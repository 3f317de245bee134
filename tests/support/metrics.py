"""Reading a Prometheus exposition the way Prometheus would: through prometheus_client's own parser, so a test
fails on text a scraper would reject, not only on a missing substring."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from prometheus_client.parser import text_string_to_metric_families

Key = Tuple[str, Tuple[Tuple[str, str], ...]]


class Exposition:
    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: Dict[Key, float] = {}
        for f in self.families.values():
            for s in f.samples:
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def type_of(self, family: str) -> str:
        return self.families[family].type

    def help_of(self, family: str) -> str:
        return self.families[family].documentation

    def get(self, name: str, **labels: str) -> Optional[float]:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def value(self, name: str, **labels: str) -> float:
        v = self.get(name, **labels)
        assert v is not None, f"no sample {name}{labels} in:\n{self.text}"
        return v

    def labelled(self, name: str) -> List[Dict[str, str]]:
        return [dict(k[1]) for k in self.samples if k[0] == name]
