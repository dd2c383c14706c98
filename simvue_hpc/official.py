"""The official Simvue client's alert methods (``create_*_alert``), with its parameter names.

A mixin of :class:`~simvue_hpc.api.Simvue`: each builds a definition (``alerts``) and hands it to
``_define``, which sends it to the aggregator once per name. Times are minutes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .alerts.definitions import MetricAlertOptions


class OfficialAlerts:
    """``create_metric_threshold_alert``, ``create_metric_range_alert``, ``create_event_alert``,
    ``create_user_alert``; each returns the alert's name, which is its id here."""

    def _define(self, definition: dict[str, Any]) -> None:
        raise NotImplementedError

    def create_metric_threshold_alert(
        self,
        name: str,
        metric: str,
        threshold: float,
        rule: str,
        *,
        attach_to_run: bool = True,
        **options: Unpack[MetricAlertOptions],
    ) -> str:
        """The official client's metric threshold alert (``is above``/``is below``; minutes).
        Evaluated by the aggregator on the reduced values; returns the alert's name, its id here."""
        from .alerts import metric_threshold_alert

        _only_attached(attach_to_run)
        self._define(metric_threshold_alert(name, metric, threshold, rule, **options))
        return name

    def create_metric_range_alert(
        self,
        name: str,
        metric: str,
        range_low: float,
        range_high: float,
        rule: str,
        *,
        attach_to_run: bool = True,
        **options: Unpack[MetricAlertOptions],
    ) -> str:
        """The official client's metric range alert (``is inside range``/``is outside range``)."""
        from .alerts import metric_range_alert

        _only_attached(attach_to_run)
        self._define(metric_range_alert(name, metric, range_low, range_high, rule, **options))
        return name

    def create_event_alert(
        self,
        name: str,
        pattern: str,
        *,
        description: str | None = None,
        frequency: float = 1,
        notification: str = "none",
        trigger_abort: bool = False,
        attach_to_run: bool = True,
    ) -> str:
        """Critical when an event containing ``pattern`` is recorded (by any rank)."""
        from .alerts import event_alert

        _only_attached(attach_to_run)
        definition = event_alert(
            name, pattern, frequency, notification=notification, description=description, abort=trigger_abort
        )
        self._define(definition)
        return name

    def create_user_alert(
        self,
        name: str,
        *,
        description: str | None = None,
        notification: str = "none",
        trigger_abort: bool = False,
        attach_to_run: bool = True,
    ) -> str:
        """An alert whose state the code sets with :meth:`log_alert`."""
        from .alerts import user_alert

        _only_attached(attach_to_run)
        self._define(user_alert(name, notification=notification, description=description, abort=trigger_abort))
        return name


def _only_attached(attach_to_run: bool) -> None:
    if attach_to_run is not True:
        raise ConfigurationError(
            "attach_to_run must be True: an alert defined here belongs to this run (define alerts that "
            "belong to no run with the Simvue server's own client)"
        )
