"""The notify function's entry point: an alert record -> the site's incident (sentinela.services.incidents),
whose opening texts the on-call rangers through its channels, idempotent per (incident, channel, ranger, step)."""

from __future__ import annotations

from sentinela.domain.alert import Alert
from sentinela.domain.repositories import Repositories
from sentinela.services.incidents import IncidentService, NotifyResult


class NotifyService:
    def __init__(self, incidents: IncidentService) -> None:
        self.incidents = incidents

    @property
    def store(self) -> Repositories:
        return self.incidents.store

    def handle_alert(self, alert: Alert) -> NotifyResult:
        """Policy, then the site's incident: only an incident's opening texts (sentinela.services.incidents)."""
        return self.incidents.on_alert(alert)
