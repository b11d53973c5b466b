"""A threat class added through data alone: a model card that names it (the tiny model with one more
label, as a retrain would give) and a policy file entry for it (POLICY_FILE). No code knows "drone";
the real handlers on the local stack carry its clip to an alert, an incident and a rendered SMS.

The dummy class takes every per-class trait the policy has (its names, no audio link, the voice
retention tag, a second "2" before a false alarm closes it), to show that each one flows from data.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from sentinela import runtime
from sentinela.adapters.store import Store
from sentinela.domain.phone import segments
from sentinela.domain.policy import DEFAULT_POLICY, forget_policy
from sentinela_tools.devtools import tiny_model
from sentinela_tools.local.stack import LocalStack
from tests.conftest import encode, impulse, tone
from tests.integration.test_incidents import incidents, site, texts, twiml_text

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 11, 28, 14, 0, tzinfo=dt.UTC)  # 11:00 in Santiago
# The tiny model hears a moderate sustained sound as its new label (a loud one is still its chainsaw).
DRONE = encode(tone(6.0, amp=0.3))
DRONE_LABEL = {"Drone_Drone": (60.0, 0.0, -9.0)}
DRONE_RULE = {"drone": {"model_labels": ["Drone_Drone"], "store": 0.3, "alert": 0.8}}
DRONE_POLICY = {"names": {"es": "DRON", "en": "DRONE"}, "group": "airspace", "window_s": 1800,
                "audio_link": False, "retention": "voice", "false_alarm_confirm_s": 300}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The stack on a card and a policy file that name the new class; the shipped policy is back after."""
    base = tmp_path_factory.mktemp("new-class")
    card = tiny_model.build(base / "model", labels=tiny_model.LABELS | DRONE_LABEL,
                            threats=tiny_model.THREATS | DRONE_RULE)
    policy = yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    policy["classes"]["drone"] = DRONE_POLICY
    policy_file = base / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
    before = {k: os.environ.get(k) for k in ("POLICY_FILE", "SMS_BACKOFF_S")}
    os.environ.update({"POLICY_FILE": str(policy_file), "SMS_BACKOFF_S": "0.01"})
    s = LocalStack(card=card).start()  # the stack forgets the cached policy: it reads POLICY_FILE
    try:
        yield s
    finally:
        s.stop()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        forget_policy()


def _tags(stack: LocalStack, key: str) -> dict[str, str]:
    got = stack.client("s3").get_object_tagging(Bucket=stack.names["ClipsBucket"], Key=key)
    return {t["Key"]: t["Value"] for t in got["TagSet"]}


def test_a_class_added_as_data_reaches_a_rangers_sms(stack: LocalStack, store: Store, clock: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMS_AUDIO_LINKS", "1")  # on, and still no link: the class says audio_link false
    runtime.reset()  # settings are read once per container: this is a new one
    site(store, "new-a", [{"ranger_id": "ana", "phone": "+56900000901"},
                          {"ranger_id": "tom", "phone": "+15005550901", "lang": "en"}])
    key, _ = stack.upload(DRONE, "new-a", "rec-1", T0)
    stack.run_until_idle()
    (clip,) = [c for c in store.scan_all() if c.get("type") == "clip" and c.get("key") == key]
    assert clip["status"] == "processed" and clip["alerts"] == ["drone"]
    assert any(d["threat"] == "drone" and d["alert"] for d in clip["decisions"])
    (inc,) = incidents(store, "new-a")
    assert inc["threat"] == "drone" and inc["group"] == "airspace" and inc["state"] == "open"
    sent = dict(texts(stack, "+56900000901", "+15005550901"))
    assert len(sent) == 2  # one text each: no audio link for this class
    es, en = sent["+56900000901"], sent["+15005550901"]
    assert es.startswith(f"SENTINELA {inc['ref']}: DRON ") and "Sitio new-a" in es and "11:00 hora local" in es
    assert en.startswith(f"SENTINELA {inc['ref']}: DRONE ") and "Reply 1=on my way 2=false alarm" in en
    for body in (es, en):
        assert segments(body).encoding == "GSM-7" and segments(body).segments <= 2
    # the clip carries the class's retention tag, as a human_voice clip does
    assert _tags(stack, key).get("sentinela-retention") == "voice"
    # its false alarm needs a second "2" within 5 minutes (false_alarm_confirm_s: 300)
    asked = twiml_text(stack.sms_reply("+56900000901", "2"))
    assert f"Incidente {inc['ref']} es un DRON" in asked and "antes de 5 min" in asked
    assert (store.get_incident(inc["incident_id"]) or {})["state"] == "open"
    assert "cerrado como falsa alarma" in twiml_text(stack.sms_reply("+56900000901", "2"))
    assert (store.get_incident(inc["incident_id"]) or {})["state"] == "false_alarm"


def test_the_shipped_classes_behave_as_before_beside_the_new_one(stack: LocalStack, store: Store,
                                                                  clock: Any) -> None:
    site(store, "new-b", [{"ranger_id": "ana", "phone": "+56900000902"}])
    key, _ = stack.upload(encode(impulse()), "new-b", "rec-1", T0)
    stack.run_until_idle()
    (inc,) = incidents(store, "new-b")
    assert inc["threat"] == "gunshot"
    ((_, body),) = texts(stack, "+56900000902")
    assert f"SENTINELA {inc['ref']}: DISPARO " in body
    assert "sentinela-retention" not in _tags(stack, key)

