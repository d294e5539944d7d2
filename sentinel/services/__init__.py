"""Use cases the transport layer calls: one service per surface (relay, native chat).

Each service takes parsed input and an `Exchange` (what it reports back for the response and the
access log) and returns a `Reply` or a `StreamReply`; HTTP framing stays in `sentinel.api`.
"""
