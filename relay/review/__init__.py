"""The review: what moderators see and decide about held activities (relay.review.ui),
and what protects them while they do (relay.review.wellness, relay.review.preview)."""

__all__: list[str] = []
