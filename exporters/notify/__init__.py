"""``flowtel notify``'s engine: follow the history and deliver one document per finished run.

:class:`Follower` polls the history for runs that reached a final status (``completed``,
``failed``, ``cancelled``, ``abandoned``), renders each as a :class:`Notice` (run, workflow,
failed step, error, a link to its page) and hands it to a :class:`Delivery` — an HTTP webhook
or a local command — retrying with backoff until it is taken. Where it stopped is kept in a
:class:`NotifyState` file, written atomically after every delivery, so a restart neither
repeats nor skips a run (a crash between a delivery and that write repeats that one delivery;
each document carries the run id for receivers to drop such a repeat).

May import: query, db, errors, instrumentation.
"""

from exporters.notify.deliver import CommandDelivery, Delivery, DeliveryError, WebhookDelivery
from exporters.notify.follow import Follower, FollowStats
from exporters.notify.notice import NOTIFIED_STATUSES, Notice, notice_for
from exporters.notify.state import NotifyState, StateFileError

__all__ = [
    "NOTIFIED_STATUSES",
    "CommandDelivery",
    "Delivery",
    "DeliveryError",
    "FollowStats",
    "Follower",
    "Notice",
    "NotifyState",
    "StateFileError",
    "WebhookDelivery",
    "notice_for",
]
