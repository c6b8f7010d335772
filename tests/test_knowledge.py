"""KnowledgeBase: nearest neighbours and the dual-ridge technique / tactic classifiers."""

from __future__ import annotations

import pytest

from mitre.knowledge import Example, KnowledgeBase


def _examples() -> list[Example]:
    rows = [
        ("vssadmin delete shadows all quiet", "T1490", "TA0040"),
        ("wmic shadowcopy delete", "T1490", "TA0040"),
        ("bcdedit set recoveryenabled no", "T1490", "TA0040"),
        ("powershell encodedcommand invoke expression downloadstring", "T1059.001", "TA0002"),
        ("powershell enc hidden bypass iex", "T1059.001", "TA0002"),
        ("schtasks create tn updater tr payload sc onlogon", "T1053.005", "TA0003"),
        ("schtasks create sc daily tr script", "T1053.005", "TA0003"),
        ("reg add run key currentversion run payload", "T1547.001", "TA0003"),
    ]
    return [Example(id=str(i), text=t, techniques=(tid,), tactics=(tac,)) for i, (t, tid, tac) in enumerate(rows)]


@pytest.mark.parametrize("char_ngrams", [True, False])
def test_classifier_ranks_the_matching_technique_first(char_ngrams: bool) -> None:
    kb = KnowledgeBase(_examples(), char_ngrams=char_ngrams)
    out = kb.classify_many(["vssadmin.exe delete shadows /all", "schtasks /create /tn x /tr y"], k=3)
    assert [row[0][0] for row in out] == ["T1490", "T1053.005"]
    assert all(len(row) == 3 for row in out)
    assert out[0][0][1] > 0 > out[0][-1][1]


def test_tactic_classifier_and_neighbours() -> None:
    kb = KnowledgeBase(_examples())
    tactics = kb.classify_tactics_many(["powershell -enc abc -nop -w hidden"])[0]
    assert set(tactics) == {"TA0002", "TA0003", "TA0040"}
    assert max(tactics, key=lambda t: tactics[t]) == "TA0002"
    neighbours = kb.neighbours("wmic shadowcopy delete", k=2)
    assert neighbours[0].example.techniques == ("T1490",)
    assert neighbours[0].similarity == pytest.approx(1.0)


def test_empty_knowledge_base_is_rejected() -> None:
    with pytest.raises(ValueError):
        KnowledgeBase([])
