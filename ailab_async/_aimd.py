"""The request-rate policy, as a pure state machine: no clock, no sleeping, no I/O.

Every decision about *how fast* (and how many at once) to send lives here; times are passed
in, so the policy is tested with tables of events (``tests/test_aimd.py``) and against a zoo
of server limiters on a simulated clock (``tests/test_rate_zoo.py``), with no event loop.
Its state (:class:`AimdState`) is a few scalars and four short rings per send-time bucket,
so it serialises to a flat mapping. Two stores run this very code:

* :class:`~ailab_async.AdaptiveRateLimiter` (``_ratelimit.py``) keeps one state in process
  memory, reads the clock, and queues senders until :meth:`AimdPolicy.claim` grants a slot;
* ``ailab_async.contrib.redis`` keeps one state, shared by many processes, in a Redis hash:
  each operation reads it, runs this policy on Redis's clock, and writes it back in one
  optimistic transaction.

The server's limiter is unknown (a token bucket of any burst, a sliding or fixed window, a
leaky bucket, a cap on requests in flight, one that changes), so the policy finds the limit
from what the server *accepted*, by send time:

* **Paced from the start.** Sends are spaced ``1 / rate`` apart in arrival order, on a
  schedule: a send that left late (an event loop's timer fires after its time) is followed
  on time, as close as :data:`CATCH_UP` of a spacing, so late wake-ups do not add up (a
  stall longer than :data:`MAX_CATCH_UP` restarts the schedule instead: while the pace
  probes for the limit, catching up that much could put more sends in one of a server's
  windows than it allows; told the limit, only one longer than :data:`MAX_CATCH_UP_TOLD`,
  all the headroom leaves in a second: that schedule is under the limit, and a send caught
  up never goes before its slot). Once
  the server refuses at a pace it may have been refused for such a catch-up (a marginal
  refusal, or one at the configured limit: a server that allows no burst), sends are never
  closer than a spacing at that pace (:attr:`AimdState.burstless`), nor than
  :data:`HEADROOM` of one (told the limit, only a refusal at the ceiling says so, and a
  cut that proves not enough takes back what its event's first refusal said: the limit
  dropped; not told, the server taking more than a fifth above that pace over a second,
  refusing none, takes it back: a probe refused while the limit was down made it). Told a
  ``rate_limit``, the policy starts at it, less
  :data:`HEADROOM` (1.5 %), and never goes above that. Not told, it starts at
  :data:`START_RATE` and grows by slow start: every accepted request adds
  ``ln 2 / (SLOW_START_RTTS * RTT)`` (the rate doubles every :data:`SLOW_START_RTTS` round
  trips, at most every :data:`SLOW_START_DOUBLING` seconds, so against a server that answers
  in milliseconds it is above any demand within a few of them; the first round trip, which
  also opened the connection, is dropped for a second one well under it).
* **A ramp within reach of what was accepted.** While the pace is what holds the senders
  back (at least 80 % of it was sent over the last second), slow start takes it no further
  than :data:`SLOW_START_LEAD` (1.85) times what the server accepted over that second: a
  window refuses only once its count over its span is over, and a ramp unchecked by what
  it accepted was about 2.5 times its limit by then, with a round trip of requests in
  flight to be refused (half as many now, and the cut is from nearer the limit). Not when
  the client sends well under its pace (a server that keeps up with it: see below), nor
  when the shortest round trip seen is so short that slow start doubles at its fastest (a
  server next door: a window is filled before there is a second of history, and its 429s
  come back within milliseconds, so the lead would spare none, and only slow the start).
* **Nearly free while it is not the limit.** In slow start the rate also grows while the
  demand (sends over the last 0.2 s) is above :data:`SLOW_START_USE` of it, so it stays at
  about twice the demand, and an unused pace is banked for :data:`SLOW_START_BURST`
  seconds: a clump of senders (answers that arrive together) goes at once, with no timer.
  Bursts stay bounded (50 ms of a pace at most about twice what was sent): it is not
  "unpaced until the first 429".
* **Growth only when it is the limit.** Otherwise the rate grows only on answers to
  requests sent while senders were waiting for the pace: a lightly loaded client proves
  nothing.
* **A cluster of 429s is one event.** A ``429`` for a request sent after the previous
  event's hold-off cuts the rate to :data:`BACKOFF` (95 %) of the limit estimate; the next
  ``max(HOLD, 2 RTT)`` seconds are a hold-off: 429s for requests sent in it (a sliding window
  draining, requests already in flight) change nothing, and the rate does not grow. Told
  the limit, a 429 that came back at once, at a pace under what the server took (a limit
  that dropped under the told one), starts the hold-off a round trip after its send, as
  one that comes after the latency does (started at the send, it covered a round trip
  less of sends, and the refusals of a dropped limit's window spent its quick probes).
* **The estimate is what was accepted.** The pace each refused request left at is known
  (a ring of paces per bucket). If since the last cut the server accepted nearly everything
  (at most 10 % refused) of a pace that was used (at least 80 % of it sent), this refusal
  is marginal: the limit is that pace, or what the server accepted over the last second if
  less. Otherwise the limit is at most the rate the server accepted, by send time, over
  the last :data:`MEASURE_SPAN` seconds since the last cut (or since the first send: never
  divided by more time than has passed): the right answer for windows, which accept their
  count at any pace, and for the end of slow start. The recovery then aims halfway between
  it and the refused pace, but not above what the server accepted over the last second (a
  ramp that filled a fixed window went far above its rate, and would be refused again).
* **The end of slow start is read twice.** Once the sends from the first refused request
  to the cut are answered: if the server refused about half of them or fewer (counted
  from their answers, not from whole buckets of send time), it refuses
  only what is over its rate (a token bucket of small burst, a leaky bucket, which accepts
  one request in two just above its rate), not a window the ramp filled (which refuses all
  until it drains): the cut is raised to what it accepted, or to the pace it accepted all
  of just before the first refusal, instead of the ramp's average. Not told, if it refused
  most of them but took about what it took of the sends a second before, a sliding window
  the ramp filled is rolling: its count (what it took over the second before the first
  refusal) is the limit found (see below), and the cut is raised to
  :data:`LEARNED_HEADROOM` of it, not left at the ramp's average. So is one that refused
  half of them or a little more and took 0.85-1.2 times what it took a second before (a
  server that refuses only over its rate takes well more: its ramp a second before was
  under its rate), if its count is above what the other reading would find: a limit found
  too low is never refused, one found too high is forgotten at the next refusal.
  A 429 that came back at once (before any answer to the sends around it: a cap on
  requests in flight, a gateway) has no sends from it to the cut: those re-read run on to
  a round trip past the cut, and a cap that refuses none of them is read as when its 429s
  come after the latency. Not told, if the server took every one of those (at the cut's
  pace, less than half the pace it took in full just before the first refusal), a cap on
  requests in flight and a sliding window the ramp filled look alike; later sends tell
  them apart: the pace goes back to :data:`BACKOFF` of that pace, the window stays at the
  cut's until the hold-off ends. A cap refuses none of that (the window keeps what it
  held); from then on a refusal at once with the window grown above the cut's is the
  window's (it goes back, the pace stays). A window refuses it: its first refusal, or any
  other than such a cap's, ends the reading, and cuts to :data:`BACKOFF` of what the
  server took over the second before (the window's count).
* **Told the limit, jitter teaches headroom.** A marginal refusal at 90 % of the ceiling or
  more (the send times jitter on their way, and a server that allows no burst refuses one
  that arrives early) lowers the ceiling to :data:`LEARNED_HEADROOM` of that pace (never
  below :data:`MIN_HEADROOM` of the limit), and the rate to that ceiling: no further cut.
  Told, once the server has refused a send at the ceiling, so does a refusal there with up
  to a fifth of the sends since the last cut refused, the pace used or not (a few sends
  after a cut, two refused are jitter too): such a server refuses an early arrival at any
  pace.
  Every request accepted while the pace holds senders back gives a little of it back, so
  the headroom settles where about :data:`HEADROOM_REFUSED` of the requests are refused,
  instead of ratcheting lower with every rare refusal for as long as the batch runs.
* **Told too much, a server that allows no burst.** A store that books ahead (many
  processes told one figure), refused from the very first sends, and in about half of what
  its first cut sends (an overrun leaky bucket takes one request in two), corrects that
  cut aiming at the geometric mean of what the server took (a lower bound of its limit,
  not the limit) and the pace refused, holding off 0.4 s, not a second (such a server
  refuses at once: only the sends booked at the pace corrected are still the event's, and
  the first refusal after it is judged on the sends since). From then on a marginal
  refusal far under the told ceiling finds the limit, held as if told (see below), and a
  refusal of a send at the lowered pace in a lesson's hold-off teaches more headroom at
  once, rather than the hold-off ending in a cut to 95 % of what the server took. Told its
  true rate, such a server (refused from the first sends, in at most about half of the
  sends since the cut) is known by the first refusal after the first cut's hold-off: up to
  half of the sends since a cut refused are then jitter, not a fifth. From then on a
  sender that wakes more than :meth:`AimdPolicy.late_limit` after its booked slot gives it
  back and books another (sent late, it takes the room of the next process's send on
  time, which the server refuses), and a cut judged at once (a lesson in headroom) is
  judged on the sends booked after it: those booked before, at the pace it lowered, are
  that pace's.
* **Not told, the limit found is held as if told.** Two marginal refusals at nearly one
  pace (within 5 %), the server having taken at least 90 % of it over the second before
  the second one, find the limit: what the server took (a window's count, not the pace it
  refused). So does the end of slow start read twice: what a server that refuses only what
  is over its rate accepted, a sliding window's count. From then on the limit found is a
  ceiling as a configured one is: a refusal near it teaches headroom (a lesson of 2 %, given
  back by the requests accepted after it) instead of a cut to 95 % and a climb back over the
  cubic, and a limit that drops is followed as told (a cut that was not enough, below).
  :data:`PROBE_AFTER` seconds after each hold-off the pace probes above the limit found,
  along the recovery's cubic; a refused probe goes back to it, unless the server took
  more than a tenth above it over the second before: the limit rose, and is found again
  from a cut, as at first. So is one that a refusal contradicts (a cut that is no lesson:
  most of a pace refused, refused far below it, or a cut that was not enough): slow
  start's end misread a window, or the limit dropped. A limit found under what slow
  start's ramp got through (it dropped while slow start's cut held) is probed back up to
  that sooner (``_RAMP_PROBE_AFTER``), quickly, and on from it: once, until such a
  probe is refused. A limit found at slow start's end (a server that refuses only what is
  over its rate, and also a send that arrives a little early, so the ramp may have met a
  refusal below its limit) is found again at ``_REFOUND`` of a probe's pace refused more
  than a tenth above it, the server having taken every send of the half second before.
* **A cut that was not enough ends the hold-off.** If more than 30 % of what was sent
  since the cut is refused too (judged at once after a marginal refusal or a lesson in
  headroom, 0.2 s after any other cut, as a window draining refuses for a while), the
  limit dropped or a burst the server allowed inflated the accepted rate: that is a new
  event, measured on what the server accepted since the cut (of the few sends since a cut
  judged at once, at the pace they left at: a limit that just dropped refuses them all).
  Not told, a cut for a 429 that came back at once is judged from a round trip after it,
  as one after the latency is: it came as the server started refusing, and a fixed window
  the pace filled refuses everything until its boundary.
  After slow start no event cuts by more than half (a short or fully refused span must not
  send the rate to the floor). Such a correction is itself judged only after 0.5 s: a fixed
  window filled by a pace told too much refuses everything until its boundary. If the
  server took well under the pace (under 90 % of it) over the two seconds before the
  correction (a window let its count through while the pace climbed above it), the
  recovery aims back at what it took, not from the halved rate along the cubic beyond it
  (which took a pace told too much back to the told figure within three seconds).
* **Back fast, then probe ever faster.** After the hold-off the rate follows a cubic (as
  TCP CUBIC's window) from the cut rate to just under the pace that was refused (the
  geometric mean of that pace and the accepted rate when the refusal was not marginal):
  quickly at first, flat near it, then beyond it ever faster, so a limit that rose is found
  within seconds and one that did not costs one small cluster of 429s now and then. Once a
  marginal refusal's event proves a cluster (4 429s or more: a window let a ramp through
  until its count was full, then refused a round trip of sends; a server that refuses only
  what is over its rate refuses one or two), the cubic levels off just over what the
  server accepted over the second before instead, as the ramp went far above the window's
  rate (not after a probe that showed a limit found rose: that one is found again soon).
* **Back quickly to what the server took.** A refusal after the server took the pace over
  the second before it (at least 80 % of it; after slow start, or told the limit) records
  what it took. If the limit dropped, the recovery reaches that again within
  :data:`QUICK_PROBE` seconds of the refused pace, and no further on the quick curve
  (beyond it the slow one finds a limit that rose): a limit that comes back is found
  within a second or two, not four. If the pace the server took then was still short of
  where the recovery was heading (a limit that dropped before the pace got back to it), or,
  not told, what it took is short of the pace refused on its way back there (the pace rose
  over that second, and the server took all of it), the limit may be higher: the target
  reached with nothing refused, the pace probes on from it at once along the slow cubic,
  instead of holding it until the slow curve passes it (not otherwise: at a target that is
  the limit, probing on sooner costs 429s). Not told, a limit that dropped in slow start's
  hold-off (before the pace had a second at the old level) is probed back up to what slow
  start's ramp got through, if the first refusal after it comes on the pace's way back and
  the server took less. A quick probe that is refused (more than a tenth above the pace
  refused before: just above it, the slow curve's climb is refused by the dropped limit)
  uses one of :data:`QUICK_PROBES`; a lower rate taken meanwhile (the dropped limit)
  neither lowers the target nor gives them back, so a limit lowered for good (a window
  refuses a burst of each probe) is probed quickly a few times only. Told the limit, the
  quick climb takes ``_DROPPED_CLIMB`` seconds (sooner on a limit that came back), and at
  most one quick probe is used up every ``_QUICK_PROBE_EVERY`` seconds (the quicker probes
  of a low phase of six seconds would have used all three). Told
  the limit (perhaps too much), what it took is measured over two seconds as well, and the
  lower of the two is kept (a fixed window lets up to twice its count through in one
  second).
  Told, a cut on that climb (a probe refused under what the server took) holds off half
  a second, not :data:`HOLD`: one probe was refused, and the limit may be back any moment.
  And once the server takes over a second more than the dropped limit allows (more than
  the most it took over any second around the last refused probe: a window's count),
  none refused, the limit is back: the pace goes straight
  to what the server took before the drop, and the window of requests in flight to what
  that pace needs, rather than the quick curve's last stretch one answer at a time.
* **A window beside the rate.** A cut also caps the requests in flight at the number in
  flight when the 429 came (a server that limits requests in flight refused the one above
  its cap), at least what the new pace needs at the usual round trip (told the limit, a cut
  before any answer, for a 429 that came back at once, is raised to that at the first
  answer, unless it held most of it: a cap's, whose cut pace is taken back). The window
  grows by one per window of answers, only while it is what holds senders back. Told the limit, a
  refusal at the ceiling of a request sent with more in flight than that cut's window, the
  window full, is the window's: it goes back to that cut's window (and grows above it again
  only :data:`PROBE_AFTER` seconds after a hold-off, and not while it keeps 95 % of what the
  pace needs at the round trip in flight: a probe could take little more, and costs a 429
  and its retry's wait), and the pace stays (a refusal at the
  ceiling taken for a server that allows no burst was the cap's too: late sends catch up
  again). Nor is a first refusal in the run's first round trip, of a request sent with
  more in flight than the pace sends in a round trip (the first answer came late), taken
  for one: a cap refuses the request above it however evenly the sends went. From such a
  refusal on, while the last cut kept the told pace and the window, each request out for
  the shortest round trip seen, carries no more than the told limit, the window alone
  paces the sends: a place it frees goes without waiting for the pace's next slot
  (answers come back unevenly, and a freed place waited for it), only kept
  :data:`CATCH_UP` of a spacing after the last send (requests sent together were
  answered later, the server working on them at once, and a cap's clumps never spread
  again). Not told,
  once the limit is found, a 429 that came back at once (the count in flight is then the
  server's) for a request sent at the ceiling with at least the last cut's window in
  flight, the window full, is the window's as well, and a pace probing above the limit
  found goes back to it (until one such 429 comes with fewer in flight: a server that
  refuses under the window is no cap). Slots booked
  ahead
  (:meth:`AimdPolicy.reserve`) and not yet due are not at the server: the window does not
  count them; and a store that books ahead, which hears of answers late, is allowed at
  least what the pace sends over its horizon. Requests in flight
  are forgotten after :data:`STALE_IN_FLIGHT` seconds without any release (a process that
  died holding them).
* **The batch's end.** When the input of a batch runs out (:meth:`AimdPolicy.wind_down`:
  ``client.map`` tells the in-process limiter), the requests in progress are all there is
  to send: the pace stops growing until they are accepted, and if it held senders back
  at more than :data:`WIND_DOWN_ABOVE` times what the server took, it comes down to that
  (not in slow start). A probe then could only cost a 429, and a retry's wait at the end.
  At a server that allows no burst (which refuses an early arrival at any pace near its
  limit), the pace comes down by 5 % as well.
* **Retry-After is information.** It says nothing will be accepted before then, so the pace
  waits until the refused request's send time plus the *certain* part of it
  (:func:`certain_retry_after`: all of a fractional value, one second less than a whole
  number, which may have been rounded up), capped by :func:`capped_retry_after`. The
  refused request's own retry waits all of it (the dispatcher does that). A store that
  books ahead (``books_ahead``: the Redis store), refused with a whole second by a fresh
  cut that is not marginal, after sends that began less than a second before (at the
  start, or after an idle spell) and at least ``_REFILL_SPAN`` before: no send until a
  second after the first of them, when a one-second window they filled has room again
  (else every sender is refused until then, and each retry waits out the whole second).

A store calls :meth:`AimdPolicy.claim` (or :meth:`AimdPolicy.reserve`, which books a slot a
little ahead) before a send, :meth:`AimdPolicy.release` when the request is over whatever its
outcome, then :meth:`AimdPolicy.on_success` or :meth:`AimdPolicy.on_rate_limited` with the
request's send time.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any

import attrs

from ._protocol import MAX_RETRY_AFTER
from .errors import ConfigurationError

__all__ = [
    "BACKOFF",
    "BUCKET",
    "BUCKETS",
    "CATCH_UP",
    "HEADROOM",
    "HEADROOM_REFUSED",
    "HOLD",
    "LEARNED_HEADROOM",
    "MAX_CATCH_UP",
    "MAX_CATCH_UP_TOLD",
    "MEASURE_SPAN",
    "MIN_HEADROOM",
    "MIN_RATE",
    "PROBE_AFTER",
    "QUICK_PROBE",
    "QUICK_PROBES",
    "SLOW_START_BURST",
    "SLOW_START_DOUBLING",
    "SLOW_START_LEAD",
    "SLOW_START_RTTS",
    "SLOW_START_USE",
    "STALE_IN_FLIGHT",
    "START_RATE",
    "WIND_DOWN_ABOVE",
    "AimdPolicy",
    "AimdState",
    "capped_retry_after",
    "certain_retry_after",
]

#: A configured limit is paced this much under: sends land with jitter, and a server that
#: allows no burst refuses a request that arrives a millisecond early (such a server, once
#: seen, also teaches more headroom: see :data:`LEARNED_HEADROOM`).
HEADROOM = 0.985
#: A send that left late (a timer fires after its time) may be followed by the next one
#: on schedule, as close as this share of a spacing, until the server shows it allows no
#: burst: then sends are never closer than :data:`HEADROOM` of one.
CATCH_UP = 0.5
#: ... but a send later than this (seconds: a third of what :data:`HEADROOM` leaves in a
#: one-second window) restarts the schedule instead of being caught up ...
MAX_CATCH_UP = 0.005
#: ... or, told the limit, later than this (all that :data:`HEADROOM` leaves in a one-second
#: window): that schedule is under the limit, and catching up never puts a send before its
#: slot, so no window of the server's sees more than the schedule allows.
MAX_CATCH_UP_TOLD = 0.015
#: Told a limit, a refusal of a fully used pace at the ceiling (the send times jitter on
#: their way, and a server that allows no burst refuses one that comes early) lowers the
#: ceiling to this share of that pace; never below :data:`MIN_HEADROOM` of the limit ...
LEARNED_HEADROOM = 0.98
MIN_HEADROOM = 0.8
#: ... and every request accepted while the pace held senders back gives this much of it
#: back (up to none): the headroom settles where about :data:`HEADROOM_REFUSED` of the
#: requests are refused (each costs one slot; a pace lowered for good costs every slot).
HEADROOM_REFUSED = 0.005
#: Not told the limit, once it is found (see :meth:`AimdPolicy.on_rate_limited`), the pace
#: probes above it this many seconds after an event's hold-off, along the recovery's cubic:
#: a limit that rose is found again, and a refused probe goes back to the limit found.
PROBE_AFTER = 2.5
#: The rate never drops below this many requests per second.
MIN_RATE = 0.2
#: The first rate when no limit is configured (requests per second); slow start grows it.
START_RATE = 20.0
#: Slow start doubles the rate at most once per this many round trips (a server in
#: another process answers in milliseconds: the rate is above any demand in a few of them) ...
SLOW_START_RTTS = 1.75
#: ... and at most this often (seconds).
SLOW_START_DOUBLING = 0.02
#: In slow start a pace not fully used banks up to this many seconds of it, sent at once
#: when senders come in a clump (answers arrive together); bursts stay bounded by the pace,
#: which slow start keeps at most about twice the demand.
SLOW_START_BURST = 0.05
#: In slow start the rate also grows while the demand is above this share of the pace, so
#: a client the server keeps up with rarely waits for it.
SLOW_START_USE = 0.5
#: While the pace is what holds the client back (most of it was used, and the shortest round
#: trip is long enough that slow start doubles per :data:`SLOW_START_RTTS` of them), slow
#: start takes it no further than this many times what the server accepted over the last
#: second (by send time): a window refuses only once its count over its span is over, and a
#: ramp unchecked by what it accepted was about 2.5 times the limit by then, with a round
#: trip of requests in flight to be refused.
SLOW_START_LEAD = 1.85
#: When the server took the pace for a second before a refusal, and after the cut the rate
#: is back at the pace refused, it probes back up to what the server took within this many
#: seconds (the limit dropped for a while, and comes back to where it was) ...
QUICK_PROBE = 0.7
#: ... at most this many times in a row refused, until the server takes a pace again (a
#: fixed window whose limit dropped for good refuses a burst of each: with 4, a thousand
#: requests after such a drop met 12 % 429s, with 3, 10 %; with 2, a limit low for five
#: seconds had used them all up when it came back).
QUICK_PROBES = 3
#: A cut sets the rate to this fraction of the limit estimate.
BACKOFF = 0.95
#: Seconds after a cut during which further 429s are the same event (at least two RTTs).
HOLD = 1.0
#: When the batch's input runs out (:meth:`AimdPolicy.wind_down`), a pace that held senders
#: back at more than this many times what the server took comes down to what it took: the
#: requests left are all there is to send, and a 429 now costs its retry's wait at the end.
WIND_DOWN_ABOVE = 1.1
#: Seconds of send history the accepted rate is measured over (two of a server's usual
#: one-second windows: a fixed window lets up to twice its count through in one second).
MEASURE_SPAN = 2.0
#: Width of a bucket of the send history, in seconds.
BUCKET = 0.05
#: Buckets kept: the measuring span plus room for a 429 that comes back late.
BUCKETS = 60
#: Requests in flight are forgotten after this long without a release (a crashed process
#: sharing the budget must not hold its slots for ever).
STALE_IN_FLIGHT = 10.0

# The recovery cubic: rate = peak * (1 + _CUBIC * (t - K) ** 3), K when it is back at peak.
_CUBIC = 0.1
# A refusal is marginal when at most this share of the sends since the last cut was refused
# and at least _SATURATED of the pace was used.
_MARGINAL_SHARE = 0.1
_SATURATED = 0.8
_MARGINAL_SPAN = 1.0
# A cut was not enough when, of at least _WRONG_CUT_SENDS sent since, more than
# _WRONG_CUT_SHARE were refused (judged _WRONG_CUT_SPAN seconds after a cut that was not
# marginal). A token bucket whose burst made slow start's cut twice its rate refuses about
# half of that pace, steadily: "most" missed it for a second, 20 more 429s of 500. The
# cost: four processes sharing a budget, told 1.5 times a window's limit, cut again and
# again (1.30-1.37x the ideal where 50 % after 0.5 s gave 1.12-1.26x); 40 % after 0.3 s
# gives those back, but not a deep bucket's 429s nor a limit dropped for good's. Judging a
# correction later (_CORRECTED_SPAN) and a two-second measure of what was taken give part of
# it back without touching those.
_WRONG_CUT_SENDS = 5
_WRONG_CUT_SHARE = 0.3
_WRONG_CUT_SPAN = 0.2
# A cut that corrected one that was not enough is judged only this many seconds after it:
# a fixed window filled by a pace told too much refuses everything until its boundary, up
# to a second, and judged after 0.2 s the correction (to half the pace) was halved again.
# Four processes sharing a budget told 1.5 times a fixed window's limit: 1.34x the ideal
# and 10 % 429s in the clock-free model, now 1.22x and 8.5 % (with the two-second measure
# of what the server took: see _count_quick_probes).
_CORRECTED_SPAN = 0.5
# Told the limit, a cut on the climb back to what the server took before a limit dropped
# under the told one (see _hold_off) holds off this many seconds, not HOLD: the probe
# refused just before the limit came back held the climb for a second more (the live
# benchmark's 50 -> 20 -> 50/s at 3 s and 8 s, told 50/s: 1.07x or 1.145x, bimodal, 1.102x
# on 40 seeds, now 1.081x; a told drop/return family of 21 timings 1.116x -> 1.100x, 429s
# 32 -> 35 of 500). A told limit that drops for good (sliding and fixed windows, to
# 15-30/s at 2-3 s, 600 requests) 1.079x and 1.037x -> 1.077x and 1.031x, 7.5 % and 11.0 %
# of the requests refused -> 8.1 % and 11.0 %; told too much, nothing moved. Live, where
# the slow mode is rarer (one run in nine), the mean did not move (nine runs each: 1.071-
# 1.145x, mean 1.085x -> 1.080-1.089x, mean 1.086x; 429s 31-32 -> 33-36).
_DROPPED_HOLD = 0.5
# A correction's recovery aims at what the server took over the two seconds before it when
# that is under this share of the pace (see _correction_peak). Measured at the corrections
# in the clock-free zoo: windows told 1.5 times their limit 0.69-0.84 (their count let
# through, then all refused; a sliding window answering at once 0.84: 1.10x the ideal,
# 1.16x under 0.8), token buckets 0.99-1.01 (their burst let through: aiming
# there cost a bucket of burst = rate 1.02x the ideal where it had 0.98x, not told), a
# limit that dropped 0.89 (its recovery the same either way). At 0.8, the live benchmark's
# first correction at a window (0.79 in the zoo) stayed at the halved rate.
_TOOK_SHORT = 0.9
# After a cut the rate grows by at most ln 2 / max(RTT, this) per accepted request (and no
# faster than the recovery curve).
_RECOVERY_DOUBLING = 0.35
# A first cut is re-read when under this share of the sends from the first refused one to
# the cut were refused: counted from their answers, at 0.2 s round trips a sliding window
# the ramp filled refuses 0.56-0.65 of them (40 seeds, 50/s and 100/s), a token bucket of
# burst 1 or a leaky bucket 0.06-0.56 (30/s to 100/s), 10 in flight 0.17-0.25. Counted
# over whole 50 ms buckets of send time (the one holding the first refused send has sends
# accepted before it, the one holding the cut is cut off), a window at 100/s read
# 0.45-0.61 and was taken for a rate limiter on 24 seeds of 40 (a "limit" of 140/s), at
# 50/s on 3 (live, more often: 70/s held for a second against 50, 10-17 more 429s).
_REREAD_SHARE = 0.55
# ... and when more were refused, but not over _ALL_REFUSED of them, and what the server
# took of them is under _BURST_SPENT of what it took of the sends one second before, the
# ramp spent a token bucket's burst: the pace comes down to what it takes now
# (_reread_spent_burst). Measured at slow start's end re-read, 40 seeds, 30-100/s and
# round trips of 0.1-0.35 s: sliding windows 0.79-1.49 of what they took a second before,
# fixed windows nothing (all refused) or 1.7 times as much and more, token buckets of
# burst twice their rate 0.43-0.74, three times 0.28-0.53 (of burst = rate 0.51-2.25).
# A bucket of burst 100 at 50/s: 45.5 429s of 500 -> 34.3, 0.881x -> 0.863x (no other row
# of the zoo, nor the drop/return family, moved).
_ALL_REFUSED = 0.9
_BURST_SPENT = 0.7
# ... and when what the server took of them is between _WINDOW_KEPT_LOW and _WINDOW_KEPT_HIGH
# times what it took of the sends one second before, a sliding window the ramp filled is
# rolling (it takes, once full, what it took a window before): its count is what it took
# over the second before the first refusal, found, and the cut comes up to
# LEARNED_HEADROOM of that, from the ramp's average over up to two seconds
# (_reread_full_window). Measured as above:
# sliding windows 0.71-1.84 (0.92-1.09 at 50/s and 0.2 s), token buckets of burst = rate
# 0.62-0.84, deeper ones under 0.75, fixed windows nothing or 1.7 times and more.
_WINDOW_KEPT_LOW = 0.85
_WINDOW_KEPT_HIGH = 1.6
# A sliding window the ramp filled refused, counted so, 0.54-0.60 of those sends at 70/s and
# 100/s: read as a server that refuses only over its rate (under _REREAD_SHARE), its limit
# was found at about 70 % of its count (2 seeds in 40 at 100/s, 1.57x the ideal). So half of
# them refused or more, what the server took of them between _WINDOW_KEPT_LOW and this
# times what it took of the sends one second before is a window's too: in that band it
# took 1.02-1.04 times as much, a token bucket of burst 1 or a leaky bucket (a ramp a
# second before well under its rate) 1.3 times and more, nothing before at 30/s (40 seeds,
# 30-100/s; a fixed window at 30/s 2.4 times), and only if its count is above the limit
# read the other way (answering after 0.3 s, a token bucket of burst 1 at 50/s took 1.0-1.17
# times as much there, and its count was under the pace it took in full: read as a window,
# 1.27x -> 1.32x the ideal).
_WINDOW_HALF_KEPT_HIGH = 1.2
# A 429 that came back in under this share of the shortest round trip of an accepted request
# came back at once (before any answer to the sends around it): the re-read then runs on over
# the sends of a round trip past the cut (see _instant_reread_until).
_INSTANT_SHARE = 0.5
# Not told, a limit found under what slow start's ramp got through is probed back up to that
# this many seconds after a hold-off (not PROBE_AFTER): the limit dropped while slow start's
# cut held, and may come back. The drop/return family, seeds 0-39 and 40-79: 1.1720x and
# 1.1719x -> 1.1697x and 1.1691x (a drop at 2 s to 30/s, found there: 1.213x -> 1.17x); no
# row of the zoo moved, and limits that drop for good at 2-3 s to 15-30/s (sliding and
# fixed windows, 600 requests) moved by 0.003x at most (at most 0.8 % more 429s).
_RAMP_PROBE_AFTER = 1.0
# Told the limit, a dropped limit is back once the server takes more over a second (by send
# time) than the dropped limit's count: the most it took over any second of whole buckets
# ending from _BACK_READ_BEFORE before the bucket of the last refused probe's send to
# _BACK_READ_AFTER after it (see _dropped_limit_back); the pace then goes straight to what
# the server took before the drop. A sliding window takes at most its count over any
# second, and the refused send found it full; but no second of whole buckets is the
# window's own second before that send, and the one before its bucket alone reads the
# count or one under it, so one more was asked for there: two above what that second took
# (or a tenth above, under 10/s). Read as the most over the seconds around it, the count
# needs no margin. The changing limit, told 50/s, 40 seeds, 0-39 and 40-79: 20/s from 4 s
# to 10 s 1.0840x and 1.0839x the ideal -> 1.0820x and 1.0812x; from 3 s to 8 s 1.0731x
# and 1.0731x -> 1.0714x and 1.0715x; no more 429s; the told drop/return family 1.0933x
# and 1.0927x -> 1.0914x and 1.0909x, 429s unmoved; no other row of the zoo moved.
# Read with no margin over the seconds ending up to 0.45 s before that bucket only, a
# sliding window lowered for good at 2-3 s to 15-30/s (600 requests, seeds 0-19) was taken
# to be back 78 times in 180 runs, where the margin had it 3 times (1.0774x -> 1.0791x the
# ideal); with seconds ending up to 0.15 s after the refused send's bucket too, 14 times
# (1.0780x); up to 0.3 s after, once (1.0773x). Fixed windows lowered so (a second across
# a boundary takes up to twice the count) 1.0324x and 1.0321x -> 1.0328x and 1.0330x
# (seeds 0-39 and 40-79), 12.1 % and 12.3 % of the requests refused -> 12.2 % and 12.3 %.
# (Before the margin of one, at a tenth above that second: 1.075x and 1.086x for the
# changing limits above; with it, 1.073x and 1.084x.)
_BACK_READ_BEFORE = 0.45
_BACK_READ_AFTER = 0.3
# A refusal spends one of the QUICK_PROBES only when the pace was more than this many times
# the pace last refused: just above it, the slow curve was climbing, and a limit that
# dropped refuses that as the limit, not as a probe. Spent there, a limit low for six
# seconds (50/s, 20/s from 4 s to 10 s) had used all three by the time it came back on 3
# seeds of 6, and the pace was back within 10 % of 50/s 3.2-3.4 s after it, now 1.4-1.6 s
# (the zoo's row, 40 seeds: 1.187x -> 1.16x); back at 12 s, 1.214x -> 1.137x on those
# seeds. The drop/return family (back at 8 s) did not move; limits lowered for good at 2-3 s
# to 15-30/s (600 requests) cost up to 0.01x more and 1.2 % more of the requests refused.
_QUICK_PROBE_SPENT = 1.1
# Told the limit, the quick probes are a budget of time as well as of count: a refused probe
# spends one of them only if none was spent (nor set) in the _QUICK_PROBE_EVERY seconds
# before it, and the quick climb back to what the server took is _DROPPED_CLIMB seconds from
# the refused pace, not QUICK_PROBE. The faster climb finds a limit that came back sooner
# (the probe refused just before the return held the pace under it longer than the
# return's first second), but alone it spent the three quick probes inside a five-second
# low phase (the told drop/return family 1.091x -> 1.099x); one spent a 1.5 s at most, a
# limit low for longer is probed as often for as long as three spends last, about 4.5 s
# past the drop at least, and a limit lowered for good still only three times in a row.
# Told 50/s, 40 seeds 0-39 and 40-79: 50 -> 20 -> 50/s at 4 s and 10 s 1.0820x and 1.0812x
# -> 1.0763x and 1.0756x, at 3 s and 8 s 1.0714x and 1.0715x -> 1.0645x and 1.0633x (429s
# 37.3 -> 37.9 and 34.5 -> 34.4 of 500); the told drop/return family 1.0914x and 1.0909x ->
# 1.0894x and 1.0905x; limits lowered for good at 2-3 s to 15-30/s (600 requests), sliding
# 1.0771x and 1.0768x -> 1.0762x and 1.0771x (8.1 % -> 8.4 % refused), fixed 1.0328x and
# 1.0330x -> 1.0332x and 1.0334x (12.2 % and 12.3 % -> 12.2 % and 11.6 %). At 1.2 s the
# family ran out again (1.096x); at 2 s a fixed window lowered for good was 0.001x slower,
# at 3 s 1.3 % more of its requests refused.
_QUICK_PROBE_EVERY = 1.5
_DROPPED_CLIMB = 0.6
# Not told, a probe above a limit found at slow start's end re-read (a server that refuses
# only what is over its rate), refused at more than _REFOUND_ABOVE times that limit after
# the server took every send of the _REFOUND_SPAN before it, finds the limit again at
# _REFOUND of the pace refused (see _refound_higher). A leaky bucket at 50/s, 40 seeds, 0-39
# and 40-79: 1.250x and 1.243x the ideal, now 1.236x and 1.236x (at 0.9 of it 1.242x, at 0.94
# 1.239x, at 1.0 1.287x: too high, the limit is forgotten at the next refusal that is no
# lesson); a token bucket of burst 1 the same; no other row moved.
_REFOUND_ABOVE = 1.1
_REFOUND_SPAN = 0.5
_REFOUND = 0.92
# At the batch's end, at a server that allows no burst, the pace comes down to this share of
# itself (see _wind_down_no_burst). A leaky bucket at 50/s, 40 seeds, 0-39 and 40-79: not
# told 1.236x and 1.236x -> 1.230x and 1.235x (worst seed 1.324x and 1.343x -> 1.296x and
# 1.327x), told 1.183x and 1.182x -> 1.173x and 1.175x (on LIVE_MEASURED 1.233x and 1.243x
# -> 1.228x and 1.225x, told 1.190x and 1.177x -> 1.182x and 1.167x). At 0.9, not told
# 1.236x and 1.236x; at 0.85, 1.242x and 1.244x.
_WIND_DOWN_NO_BURST = 0.95
# Not told, a marginal refusal within this share of the pace of the one before it, with the
# server having taken at least _FOUND_TOOK of the pace over the second before it, finds
# the limit (a probe far above what the server took, as a limit that dropped for a while
# refuses, finds nothing).
_FOUND_NEAR = 0.05
_FOUND_TOOK = 0.9
# A probe above the limit found, refused after the server took more than this many times
# that limit over the second before it: the limit rose, and is to be found again (a fixed
# window lets up to a tenth more through in a second by send time, a probe's ramp more).
_FOUND_ROSE = 1.1
# At the batch's end, the pace comes down to this many times the most the server took over
# the last second or two, if above it (see _wind_down_to_last_second).
_WIND_DOWN_LAST = 1.06
# Not told, a no-burst mark (AimdState.burstless) goes once the server took more than this
# many times its pace over a second, refusing none (see _burst_taken).
_BURST_TAKEN = 1.2
# A cut from a marginal refusal aims its slow recovery just under the refused pace, but once
# its event is a cluster of at least this many 429s (a window let a ramp through until its
# count was full, then refused what was sent in a round trip; a server that refuses only
# what is over its rate refuses one or two), just under _FOUND_ROSE times what the server
# accepted over the second before: a ramp through a window goes far above its rate, and
# aiming back at that pace was refused again within two seconds (a fixed window: 1.107x
# the ideal and 9.1 % 429s, now 1.076x and 8.6 %).
_CLUSTER = 4
# A refusal at this share of a configured ceiling or more teaches headroom.
_NEAR_CEILING = 0.9
# ... and, told the limit, once the server has refused a send at the ceiling (it may allow
# no burst, and refuses one that arrives early whatever the pace), so does a refusal there
# with at most this share of the sends since the last cut refused, the pace used or not (a
# few sends after a cut, two refused are jitter too). Cut to 95 % of what the server took
# instead, four processes sharing a leaky bucket told its 40/s fell to 31-33/s, where the
# best steady pace is about 35/s (zoo, seeds 0-39 and 40-79: 1.254x and 1.287x the ideal;
# with the cut's own 429 no longer counted as one since it, 1.214x and 1.229x).
_JITTER_SHARE = 0.2
# ... or this share, once a store that books ahead has seen the server allows no burst
# (``AimdState.no_burst``): four processes sharing a leaky bucket told its 40/s refused
# 21 % of the first cut's sends in its hold-off, and the first refusal after it cut the
# pace to 95 % of what the server took (28.5/s, then seconds back; 40 seeds, 0-39 and
# 40-79: 1.212x and 1.216x the ideal, 19.3 and 18.1 429s; as a lesson, 1.203x and 1.212x,
# 13.6 and 13.4 429s).
_NO_BURST_JITTER_SHARE = 0.5
# Headroom given back per request accepted while the pace held senders back: one refusal's
# worth (1 - LEARNED_HEADROOM) for every (1 - HEADROOM_REFUSED) / HEADROOM_REFUSED of them.
_UNLEARN = (1 - LEARNED_HEADROOM) * HEADROOM_REFUSED / (1 - HEADROOM_REFUSED)
# The recovery aims just under the refused pace.
_PEAK_MARGIN = 0.97
# Growth is in doublings: ln 2 per doubling time, on each answer.
_LN2 = math.log(2)
# Round trips are taken as at least this long.
_MIN_RTT = 0.05
# A store that books ahead, refused at a one-second window the sends of the last second
# filled (see _wait_for_refill): only when those sends began at least this long before the
# refused one (a window's count let through, not a jittered send at a leaky bucket's rate,
# refused a tenth of a second after the first send).
_REFILL_SPAN = 0.3
# Told the limit, a store that books ahead: a correction (a cut that was not enough) of the
# first event, whose first refusal was sent within _REFILL_SPAN of the first send, with at
# most _REREAD_SHARE of the sends since the cut refused, shows a server that allows no burst
# told too much (``AimdState.no_burst``): it refused from the very first sends, and only
# about half of them (a leaky bucket overrun takes one request in two; a window the told
# pace filled refuses all of them, 0.70-0.75 by then, and a token bucket's burst let a
# second or more through first). What it took meanwhile is then a lower bound of the limit,
# not the limit: the recovery aims at the geometric mean of it and the pace refused (aimed
# at 95 % of what it took, about 31/s for a 40/s bucket told 60/s, the pace stayed there
# for seconds); and a marginal refusal far under the told ceiling finds the limit, held as
# if told from then on (``_found_under_told``).
# ... That correction holds off this many seconds (or two round trips), not HOLD: such a
# server refuses at once, so what is left of its event is the sends booked at the pace
# corrected (a store books up to 0.1 s ahead) and the reports of their answers. Its sends
# are the event's: the first refusal after it is marginal or not on the sends since (see
# ``_judged_since``). Held for HOLD, four processes sharing a 40/s leaky bucket sat at about
# 30/s for a second (told 60/s) or 23/s (told 50/s); 400 seeds told 60/s: 1.2209x the
# ideal, now 1.2162x; 160 seeds (40-199) told 50, 60, 70, 80/s: 1.268x, 1.219x, 1.219x,
# 1.266x, now 1.251x, 1.216x, 1.216x, 1.255x; told the limit, and every other shape,
# unchanged. (Held 0.4 s but judged on the sends since the cut, the hold-off's refusals of
# sends booked at the old pace made the first refusal after it no marginal one, but a cut
# to 95 % of what the server took: told 60/s, seeds 0-79, 1.240x where 1.223x.)
_OVERRUN_HOLD = 0.4
# Told the limit, a store that books ahead, once the server is known to allow no burst
# (``AimdState.no_burst``): a sender that wakes more than this many seconds after its booked
# slot gives it back and books another (see ``AimdPolicy.late_limit``). Sent late, it takes
# the room of the next send, on time from another process, which the server refuses: that
# costs the slot too, and teaches headroom (2 % of the pace, given back over 200 answers)
# that no pace under the limit needed. Four processes of four senders sharing a 40/s leaky
# bucket (zoo, 400 requests, seeds 40-119; the live machine, the same measured with 1 % of
# its stalls, and as measured): told 40/s 1.209x, 1.114x, 1.175x the ideal -> 1.199x, 1.112x,
# 1.158x; told 60/s 1.223x, 1.153x, 1.209x -> 1.215x, 1.144x, 1.183x. At 4 ms 1.209x, 1.108x,
# 1.155x and 1.219x, 1.141x, 1.183x; at 3 ms (a timer's usual lateness, rounded up to the
# millisecond, is near that: more slots given back) the live machine's told 40/s 1.220x;
# at 8 ms 1.210x, 1.115x, 1.166x. Given back once the no-burst mark is set (burstless), not
# on no_burst, windows told 60/s gave slots back too (a fixed window 1.062x -> 1.072x); on
# no_burst, no other shape moved (token bucket, sliding and fixed windows, told 40 and 60/s).
_GIVE_BACK_LATE = 0.005
# Smoothing of the round-trip estimate (weight of a new sample).
_RTT_GAIN = 0.2
# Not told, in slow start, a round trip this much shorter than the first (the only one seen)
# replaces it: the first request opened the connection (see _first_round_trip_was_longer).
# Answers jitter by a few per cent from one to the next (0.2-0.21 s live); set-up is more.
_FIRST_RTT_LONGER = 0.93
# Told the limit, a cut before the first answer (a 429 at once) keeps its window at the
# first round trip if it held at least this share of what the pace needs at it (a cap on
# requests in flight's); else the window is raised to that (see _window_at_first_round_trip).
_CAP_HELD = 0.8
# ... and such a cut is a cap's, its pace given back, if it held at least this share of what
# the told pace needs at the shortest round trip seen over the round trip it held (see
# _cap_given_back).
_CAP_HELD_FLOOR = 0.9
# Told the limit, a cap on requests in flight that keeps at least this share of what the pace
# needs at the round trip in flight is not probed above (see _cap_enough).
_CAP_ENOUGH = 0.95
# The accepted rate needs this much send history to be trusted.
_MIN_SPAN = 0.1
# Slow start measures the demand over this many seconds of send history ...
_USE_SPAN = 0.2
# ... and what the server accepted over this many (a server's usual window).
_LEAD_SPAN = 1.0


def capped_retry_after(retry_after: object) -> float | None:
    """A server's ``Retry-After`` made safe to act on: ``None`` unless it is a finite,
    non-negative number; at most ``MAX_RETRY_AFTER``.

    >>> capped_retry_after(3), capped_retry_after(1e9), capped_retry_after(float("nan"))
    (3.0, 120.0, None)
    """
    if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)):
        return None
    if not 0 <= retry_after < math.inf:
        return None
    return min(float(retry_after), MAX_RETRY_AFTER)


def certain_retry_after(retry_after: object) -> float:
    """How long a ``Retry-After`` says *for certain* that nothing will be accepted.

    A fractional value is taken as exact; a whole number of seconds may have been rounded up
    (HTTP's ``Retry-After`` is whole seconds), so one second of it is uncertain.

    >>> [certain_retry_after(value) for value in (0.35, 1, 3, None)]
    [0.35, 0.0, 2.0, 0.0]
    """
    capped = capped_retry_after(retry_after)
    if capped is None:
        return 0.0
    return max(0.0, capped - 1.0) if capped.is_integer() else capped


def _bucket_start(time: float) -> float:
    """The start of the send-time bucket (:data:`BUCKET` seconds wide) ``time`` falls in."""
    return math.floor(time / BUCKET) * BUCKET


def _ring() -> list[int]:
    return [0] * BUCKETS


def _pace_ring() -> list[float]:
    return [0.0] * BUCKETS


@attrs.define
class AimdState:
    """Everything the policy remembers: scalars and four rings per send-time bucket.

    Small and flat on purpose: :meth:`to_fields` and :meth:`from_fields` turn it into a
    mapping of strings (one Redis hash) and back, so every store runs the same policy.
    """

    #: The pace now, in requests per second (``None``: not started yet).
    rate: float | None = None
    #: The share of a configured limit paced at, learned: see :data:`LEARNED_HEADROOM`.
    headroom: float = 1.0
    #: The pace at which the server refused what may have been a send closer than a
    #: spacing to the previous one (``inf``: none yet). It may allow no burst: from then
    #: on a send that left late is followed no closer than a spacing at that pace.
    burstless: float = math.inf
    #: Told the limit: what that was before the last event's first refusal (a cut that was
    #: not enough shows that refusal was no send caught up too close: see
    #: ``_burstless_refusal``).
    burstless_before: float = math.inf
    #: Whether a 429 has been seen (``False``: slow start), and when the last cut was.
    cut: bool = False
    cut_at: float = -math.inf
    #: A store that books ahead: the last slot booked when the last cut came (``-inf``:
    #: none). Sends up to it were booked at the pace before the cut: their refusals are
    #: that pace's, no evidence that a cut judged at once was not enough (see
    #: ``_cut_was_wrong``).
    cut_booked: float = -math.inf
    #: Sends before this time belong to the last cut's event; growth resumes after it.
    hold_until: float = -math.inf
    #: Where the recovery after the last cut levels off (just under the refused pace),
    #: and the rate that cut set.
    refused_pace: float = math.inf
    #: Where the slow recovery levels off: the refused pace's, lowered to ``aim_cap`` once
    #: the event proves a cluster of 429s (see ``_CLUSTER``; the quick curve keeps
    #: ``refused_pace``).
    aim: float = math.inf
    aim_cap: float = math.inf
    cut_rate: float = 0.0
    #: What the server took over a second before a refusal (requests per second), and the
    #: quick probes back up to it left (see :data:`QUICK_PROBE`).
    took: float = 0.0
    #: Whether that was taken at a pace short of the recovery's level, or (not told) was
    #: short of the pace refused (the server may take more: see ``_recovery_curve``).
    took_short: bool = False
    quick_probes: int = 0
    #: Told: when a quick probe was last spent, or the quick probes set (see
    #: ``_count_quick_probes``).
    probe_spent_at: float = -math.inf
    #: Not told: what the server accepted in slow start (by send time, up to the refusal
    #: that ended it), kept until the next refusal after a hold-off (``0``: none; see
    #: ``_count_quick_probes``).
    ramp_took: float = 0.0
    #: Not told: the same, kept until a probe above a limit found under it is refused (a
    #: limit found lower, after it dropped in slow start's hold-off, is probed back up to
    #: it quickly: see ``_probe``; ``0``: none).
    ramp_seen: float = 0.0
    #: Requests still to be accepted since the batch's input ran out (see
    #: :meth:`AimdPolicy.wind_down`): until then the pace does not grow (``0``: not winding
    #: down).
    winding: int = 0
    #: Not told the limit: the limit found, in requests per second (``inf``: not yet),
    #: and the pace of the last marginal refusal (how it is found).
    found: float = math.inf
    marginal_pace: float = 0.0
    #: Whether the limit found was read at slow start's end, from a server that refuses only
    #: what is over its rate (see ``_refound_higher``).
    found_by_rate: bool = False
    #: Whether the last cut took the refused pace as the limit (a marginal refusal).
    marginal_cut: bool = False
    #: Whether the last cut corrected one that was not enough (judged later: see
    #: ``_CORRECTED_SPAN``).
    corrected: bool = False
    #: When the request whose 429 ended slow start was sent, and whether what the server
    #: did with the sends from then to the cut is still to be read (``_reread_first_cut``).
    cut_sent: float = -math.inf
    reread: bool = False
    #: The answers to the sends from that request to the cut so far (those that came back
    #: after its 429): all of them, and the 429s among them.
    reread_answers: int = 0
    reread_refused: int = 0
    #: When that 429 came back at once (before any answer to the sends around it): the
    #: sends re-read run on to this, a round trip past the cut (``-inf``: to the cut; see
    #: ``_reread_end``).
    reread_until: float = -math.inf
    #: Requests in flight allowed (``inf``: no window yet), and requests in flight now.
    window: float = math.inf
    in_flight: int = 0
    #: When a request was last released (a stale in-flight count is forgotten).
    released_at: float = -math.inf
    #: The schedule: the last slot handed out, and the time the last send was granted.
    last_slot: float = -math.inf
    last_sent: float = -math.inf
    #: When a sender last had to wait for the pace / for the window (growth only then).
    pace_bound_at: float = -math.inf
    window_bound_at: float = -math.inf
    #: No send before this (a server's ``Retry-After``).
    paused_until: float = -math.inf
    #: Smoothed round trip of accepted requests, seconds (``0``: none seen yet).
    rtt: float = 0.0
    #: The shortest round trip of an accepted request seen, seconds: the network's and the
    #: server's own time, without its queue (``inf``: none seen yet).
    rtt_floor: float = math.inf
    #: The first send, so a measurement in the first second divides by what has passed.
    first_sent: float = math.inf
    #: The send history: ``sent`` and ``refused`` per ``BUCKET`` of send time, the ring's
    #: first bucket being number ``first_bucket`` (``floor(time / BUCKET)``).
    first_bucket: int = -(2**62)
    sent: list[int] = attrs.field(factory=_ring)
    refused: list[int] = attrs.field(factory=_ring)
    #: The pace in force at the last send of each bucket.
    paces: list[float] = attrs.field(factory=_pace_ring)
    #: Told the limit: the window the last cut set (``inf``: none yet), the sends per bucket
    #: that went with more in flight than that, the window full (see ``_window_refused``;
    #: before the first cut, the most in flight of each bucket's sends: see
    #: ``_cap_refused_first``), and when the window may grow above it again after such a
    #: send was refused.
    window_cut: float = math.inf
    crowded: list[int] = attrs.field(factory=_ring)
    window_grows_at: float = -math.inf
    #: Told the limit: whether the server refused a request above a window, a cap on
    #: requests in flight (see ``_cap_enough``).
    capped: bool = False
    #: Told the limit, a cut before any answer: the requests it held, until the round trip
    #: they make is answered (``0``: none; see ``_cap_given_back``).
    held_unanswered: float = 0.0
    #: Not told, the limit found: whether the server refused a request with fewer in flight
    #: than the last cut's window, its 429 at once (see ``_cap_refused_at_once``).
    below_window: bool = False
    #: Not told, slow start's end re-read after a 429 at once, every send after it accepted:
    #: from when the server is read as a cap on requests in flight, the pace having been
    #: raised and the window pinned until then (``inf``: not read so; see
    #: ``_reread_took_all_at_once``).
    cap_read_at: float = math.inf
    #: Told the limit, a store that books ahead: the server refused from the very first
    #: sends, about half of them, and the first cut was not enough (a leaky bucket, or a
    #: token bucket of no burst, told too much: see ``_no_burst_overrun``).
    no_burst: bool = False

    def to_fields(self) -> dict[str, str]:
        """The state as a flat mapping of strings (floats exact, via ``repr``)."""
        fields: dict[str, str] = {}
        for field in attrs.fields(AimdState):
            value = getattr(self, field.name)
            if isinstance(value, list):
                fields[field.name] = ",".join(map(repr, value))
            elif value is None:
                fields[field.name] = ""
            else:
                fields[field.name] = repr(value)
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> AimdState:
        """The state :meth:`to_fields` wrote, as ``str`` or ``bytes`` (Redis's answer);
        missing fields keep their initial values.

        >>> state = AimdState(rate=12.5, in_flight=3)
        >>> AimdState.from_fields(state.to_fields()) == state
        True
        """
        text = {_text(key): _text(value) for key, value in fields.items()}
        state = cls()
        for field in attrs.fields(AimdState):
            raw = text.get(field.name)
            if raw is None:
                continue
            current = getattr(state, field.name)
            value: object
            if isinstance(current, list):
                kind = float if field.name == "paces" else int
                value = [kind(part) for part in raw.split(",")] if raw else list(current)
                if len(value) != BUCKETS:
                    value = list(current)  # another version wrote it: start afresh
            elif field.name == "rate":
                value = float(raw) if raw else None
            elif isinstance(current, bool):
                value = raw == "True"
            elif isinstance(current, int):
                value = int(raw)
            else:
                value = float(raw)
            setattr(state, field.name, value)
        return state


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class AimdPolicy:
    """The policy's transitions over an :class:`AimdState`; every method takes the time.

    ``rate`` is the configured limit (``None``: find it). A store may swap :attr:`state`
    for one it loaded (that is how the Redis store shares it). ``books_ahead``: the store
    books slots ahead (:meth:`reserve` with a horizon, as the Redis store does), and waits
    for a window its first sends filled (see the module docstring's Retry-After).

    >>> policy = AimdPolicy(10.0)
    >>> policy.claim(100.0), round(policy.claim(100.0), 4)  # sent; the next one waits
    (0.0, 0.1015)
    >>> policy.release(100.2)
    >>> policy.on_rate_limited(sent_at=100.0, now=100.2)
    True
    >>> round(policy.rate(100.2), 3)  # 95 % of the 9.85/s pace it was sent at
    9.357
    """

    def __init__(
        self,
        rate: float | None,
        *,
        min_rate: float = MIN_RATE,
        backoff_factor: float = BACKOFF,
        start_rate: float | None = None,
        books_ahead: bool = False,
    ) -> None:
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf
        ):
            raise ConfigurationError(
                "rate_limit must be a positive, finite number of requests per second "
                "(None: no limit)"
            )
        #: The configured limit (``None``: none); paced at ``HEADROOM`` of it.
        self.configured = rate
        self.ceiling = math.inf if rate is None else rate * HEADROOM
        self._min_rate = min_rate
        self._backoff = backoff_factor
        # Told the limit: start at it. Not told: start at a probing rate and grow fast.
        if rate is not None:
            self._start_rate = self.ceiling
        else:
            self._start_rate = START_RATE if start_rate is None else start_rate
        self._max_catch_up = MAX_CATCH_UP if rate is None else MAX_CATCH_UP_TOLD
        # A store that books slots ahead (:meth:`reserve` with a horizon): see
        # _wait_for_refill.
        self._books_ahead = books_ahead
        self.state = AimdState()
        # _slow_start_cap's last answer: (the state, the bucket's number, the cap).
        self._lead: tuple[AimdState | None, int, float] = (None, 0, math.inf)

    # -- reading ------------------------------------------------------------------------

    def rate(self, now: float) -> float:
        """Requests per second allowed at ``now``."""
        del now  # the rate changes on events only; kept for the stores' symmetry
        rate = self.state.rate
        return self._start_rate if rate is None else rate

    # -- before a send ------------------------------------------------------------------

    def claim(self, now: float) -> float:
        """Book a send at ``now`` and return ``0.0`` if the pace and the window allow one;
        otherwise book nothing and return the seconds until it might (``inf``: when a
        request in flight is released). A waiter asks again rather than trusting the answer:
        the rate may change meanwhile."""
        wait, booked = self.reserve(now, 0.0)
        return 0.0 if booked else wait

    def reserve(self, now: float, horizon: float) -> tuple[float, bool]:
        """Like :meth:`claim`, but book a slot up to ``horizon`` seconds ahead: return the
        wait and whether the slot is booked (a store whose every call costs a round trip
        books a little ahead and sleeps until its slot)."""
        state = self.state
        if state.rate is None:
            state.rate = self._start_rate
        if now < state.paused_until - horizon:
            return state.paused_until - now, False
        # A store that books ahead hears of answers late (the Redis store: with the
        # process's next call): the window is at least what the pace sends over that
        # horizon. (A window of one, after a cut at a server that answers in milliseconds,
        # let one request out per report: 24/s at a 37/s pace, live.)
        window = max(state.window, math.ceil(state.rate * horizon))
        if state.in_flight - self._booked_ahead(now) >= window:
            if now - state.released_at < STALE_IN_FLIGHT:
                state.window_bound_at = now
                return math.inf, False
            state.in_flight = 0  # nothing came back for long: those requests are gone
        spacing = 1.0 / state.rate
        slow_start = not state.cut and self.configured is None
        if slow_start:
            # A pace not used is banked, a little (see SLOW_START_BURST).
            slot = state.last_slot + spacing
        else:
            # Keep to the schedule so wake-up delays do not add up: a send that left late is
            # followed on time, as close as CATCH_UP of a spacing; once the server has shown
            # it allows no burst, never closer than the headroom allows.
            if state.burstless < math.inf:
                gap = min(spacing, max(HEADROOM * spacing, 1.0 / state.burstless))
            else:
                gap = CATCH_UP * spacing
            slot = state.last_sent + gap
            if not self._window_paces():  # (a cap's window paces alone, sends kept apart)
                slot = max(slot, state.last_slot + spacing)
        slot = max(slot, state.paused_until)
        if slot > now + horizon:
            state.pace_bound_at = now
            return slot - now, False
        if slot > now:
            state.pace_bound_at = now
            send_at = slot
        elif slow_start and state.last_slot > -math.inf:
            send_at = max(slot, now - SLOW_START_BURST)
        else:
            # Late for the slot by a little: keep to the schedule (the next send catches up).
            # Idle for longer than a spacing, or stalled for longer than MAX_CATCH_UP (or
            # MAX_CATCH_UP_TOLD): start the schedule afresh from now (catching up more could
            # put more sends in one of a server's windows than the headroom leaves room for).
            send_at = slot if now - slot < min(spacing, self._max_catch_up) else now
        state.last_slot = send_at
        sent = max(send_at, now)
        state.last_sent = sent
        state.in_flight += 1
        state.first_sent = min(state.first_sent, sent)
        offset = self._count(state.sent, sent)
        if offset is not None:
            state.paces[offset] = state.rate
            if not horizon:
                self._note_crowded(now, offset)
        return max(0.0, send_at - now), True

    def window_wait_is_news(self, now: float) -> bool:
        """Whether a sender held back by the window at ``now`` is worth noting in the state
        (:meth:`reserve` notes it: the window grows on answers only while it holds senders
        back). A store whose every note is a write makes it at most every half round trip
        (a full window is looked at again and again): the note is then at most that stale,
        well within the round trip the growth looks back over."""
        state = self.state
        return now - state.window_bound_at >= max(state.rtt, _MIN_RTT) / 2

    def late_limit(self) -> float:
        """How late (seconds) a sender may still send on a slot booked ahead; one that wakes
        later gives it back and books another (``inf``: however late). Finite only once a
        store that books ahead, told the limit, has seen the server allows no burst
        (``AimdState.no_burst``): the sender then takes the room of the next send, booked by
        another process and on time, and the server refuses that one.

        >>> AimdPolicy(40.0, books_ahead=True).late_limit()
        inf
        """
        return _GIVE_BACK_LATE if self.state.no_burst else math.inf

    # -- the batch's end ----------------------------------------------------------------

    def wind_down(self, now: float, requests: int) -> None:
        """The batch's input ran out at ``now``, with ``requests`` in progress (sent, or
        still to be): no request will come beyond those (and their retries). Until that many
        are accepted, the pace does not grow (a probe now finds nothing the batch could use,
        and a 429 costs its retry's wait at the end); and if senders were held back by it
        and it is more than :data:`WIND_DOWN_ABOVE` times what the server took (by send
        time, over the :data:`MEASURE_SPAN` before the sends not yet answered), it comes
        down to that. Not in slow start, whose pace is no measure of the server yet (a batch
        no larger than its concurrency runs out at its first send). Per process only: a
        store shared by processes has no such method (one process's end is not the batch's).

        >>> policy = AimdPolicy(10.0)
        >>> policy.wind_down(100.0, 3)  # nothing taken yet: the pace only stops growing
        >>> policy.state.winding, round(policy.rate(100.0), 3)
        (3, 9.85)
        """
        state = self.state
        if requests <= 0 or (not state.cut and self.configured is None):
            return
        state.winding = requests
        self._wind_down_no_burst(now)
        if state.first_sent == math.inf:
            return  # nothing sent yet (told the limit, a batch that ran out at once)
        # What the server took: accepted by send time over the MEASURE_SPAN before the
        # sends not yet answered (a round trip), whatever cut came meanwhile: a pace that
        # climbed back faster than the server took comes down too. (Over the second since
        # the last cut, or only when more than a tenth was refused, the drop/return family
        # came to 1.174x, as with no coming down at all; this way 1.172x.)
        end = _bucket_start(now - state.rtt)
        start = _bucket_start(max(end - MEASURE_SPAN, state.first_sent))
        if end - start < _MIN_SPAN:
            return
        took = self._took(start, end)
        took_rate = max(0, took) / (end - start)
        if (
            self.rate(now) > WIND_DOWN_ABOVE * took_rate
            and self._pace_used(start, end) >= _SATURATED
        ):
            state.rate = max(self._min_rate, took_rate)
        else:
            self._wind_down_to_last_second(now, start, end, took_rate)

    def _wind_down_to_last_second(
        self, now: float, start: float, end: float, took_rate: float
    ) -> None:
        """The batch's end, the pace not above :data:`WIND_DOWN_ABOVE` times ``took_rate``
        (what the server took over ``[start, end)``): if it holds senders back at more than
        ``_WIND_DOWN_LAST`` times the most the server took over that span or over its last
        second, it comes down to that. After a probe's cut, the recovery climbs back past
        what a window takes (towards just over it), and the rest of the batch then runs
        into the window: a 429 in the batch's last second, whose retry waits out a whole
        second. (50/s, 20/s from 3 s to 8 s, 40 seeds, 0-39 and 40-79: 1.126x and 1.128x
        -> 1.126x and 1.126x, the worst seed 1.136x and 1.206x -> 1.136x and 1.136x; runs
        over 1.16x in 200 seeds 9 -> 1; the drop/return family 1.1613x and 1.1605x ->
        1.1607x and 1.1599x. No other row moved by more than 0.002x, told or not; at 1.04
        times, a token bucket of burst 1 1.236x -> 1.241x on seeds 40-79.)"""
        last = max(start, end - _MARGINAL_SPAN)
        if end - last < _MIN_SPAN:
            return
        took_last = max(0, self._took(last, end)) / (end - last)
        cap = _WIND_DOWN_LAST * max(took_last, took_rate)
        if self.rate(now) > cap and self._pace_used(last, end) >= _SATURATED:
            self.state.rate = max(self._min_rate, cap)

    def _wind_down_no_burst(self, now: float) -> None:
        """The batch's input ran out at ``now``, at a server that allows no burst (told the
        limit, one that refused a send at the ceiling; not told, one whose limit was read
        at slow start's end, a server that refuses only what is over its rate, and that
        refused a send caught up too close): the pace comes down to
        ``_WIND_DOWN_NO_BURST`` of it. Such a server refuses a send that arrives a little
        early at any pace near its limit, and a 429 in a batch's last second costs its
        retry a whole second; a slower pace over the requests left costs a few hundredths
        of one."""
        state = self.state
        if state.burstless < math.inf and (self.configured is not None or state.found_by_rate):
            state.rate = max(self._min_rate, _WIND_DOWN_NO_BURST * self.rate(now))

    # -- after a send -------------------------------------------------------------------

    def release(self, now: float, *, counted: bool = True) -> None:
        """A request granted by :meth:`claim` is over (whatever its outcome), at ``now``.

        ``counted=False``: it is no longer in the count (a store already forgot it, see
        :meth:`forget`), but its answer still says requests are coming back."""
        state = self.state
        if counted:
            state.in_flight = max(0, state.in_flight - 1)
        # The latest release: reports reach a shared state out of order (each process tells
        # its answers with its next call), and an earlier one told late must not make the
        # count look stale (see STALE_IN_FLIGHT).
        state.released_at = max(state.released_at, now)

    def forget(self, count: int) -> None:
        """``count`` requests counted in flight will never be released (the process that
        held them is gone): no longer in flight. Not a release: nothing came back."""
        state = self.state
        state.in_flight = max(0, state.in_flight - count)

    def on_success(self, sent_at: float, now: float) -> None:
        """The request sent at ``sent_at`` was accepted (answered without a rate-limit
        error) at ``now``: learn the round trip, and grow if the pace or window held back."""
        state = self.state
        sample = max(0.0, now - sent_at)
        if self._first_round_trip_was_longer(sample):
            state.rtt = sample
        elif state.rtt == 0.0:
            state.rtt = sample
            self._window_at_first_round_trip(now)
        else:
            state.rtt += _RTT_GAIN * (sample - state.rtt)
        state.rtt_floor = min(state.rtt_floor, sample)
        if state.held_unanswered:
            self._cap_given_back(sent_at, now)
        if state.reread and sent_at >= self._reread_end():
            self._reread_first_cut(now)
        self._count_reread(sent_at, refused=False)
        self._burst_taken(sent_at)
        if state.winding:
            state.winding -= 1
            return  # the batch's end: no growth (see wind_down)
        if state.rate is None or sent_at < state.hold_until:
            return
        rtt = max(state.rtt, _MIN_RTT)
        # Only a pace that held senders back around this send (or, in slow start, one that
        # the demand nearly used) is evidence the server could take more; a lightly loaded
        # client proves nothing about the limit.
        if state.pace_bound_at >= sent_at - 2.0 / state.rate - _MIN_RTT or (
            not state.cut and self._demand(sent_at) > SLOW_START_USE * state.rate
        ):
            # At most doubling per two round trips (slow start, and unless slow start is at
            # its fastest no further than SLOW_START_LEAD of what the last second accepted),
            # and after a cut no faster than the curve back to the refused pace and beyond.
            if state.cut:
                rate = min(
                    state.rate + _LN2 / max(rtt, _RECOVERY_DOUBLING),
                    self._recovery_curve(now - state.hold_until),
                )
            else:
                rate = state.rate + _LN2 / max(SLOW_START_RTTS * state.rtt, SLOW_START_DOUBLING)
                if SLOW_START_RTTS * state.rtt_floor > SLOW_START_DOUBLING:
                    rate = min(rate, self._slow_start_cap(sent_at))
            if state.headroom < 1.0:
                state.headroom = min(1.0, state.headroom + _UNLEARN)
            # (Never above the told ceiling: a limit found under it is probed above, up to it.)
            ceiling = min(self.ceiling, self._ceiling() * state.headroom * self._probe(now))
            state.rate = min(ceiling, max(state.rate, rate))
            self._dropped_limit_back(sent_at, ceiling)
        if state.window < math.inf and state.window_bound_at >= sent_at - rtt:
            self._grow_window(now)

    def _dropped_limit_back(self, sent_at: float, ceiling: float) -> None:
        """Told the limit, after a cut under what the server took before (a limit that
        dropped under the told one, quick probes left), on the answer to a request sent at
        ``sent_at``: if the server took more than the dropped limit's count (the most it
        took over a second around the last cut's refused send, which found it full: see
        ``_dropped_count``) over the second before this send, refusing none over the last
        half of it, the limit is back.
        The pace goes straight to what the server took before the drop (no higher than
        ``ceiling``, unless the drop's first refusal taught headroom under what the server
        took: then that lesson is taken back as far), and the window to what that pace
        needs at the round trip, rather than climbing the quick curve's last stretch one
        answer at a time; the window a cut keeps goes no lower than that (the low phase's
        cuts kept the dropped pace's)."""
        state = self.state
        if self.configured is None or not state.quick_probes or state.rate is None:
            return
        target = min(ceiling, state.took)
        if state.rate >= _PEAK_MARGIN * target or state.cut_sent == -math.inf:
            return
        low_end = _bucket_start(state.cut_sent)
        if low_end - 1.0 < max(state.first_bucket * BUCKET, state.first_sent):
            return  # (that second is forgotten, or was before the first send)
        low = self._took(low_end - 1.0, low_end)
        end = _bucket_start(sent_at)
        if (
            low >= _PEAK_MARGIN * target
            or self._took(end - 1.0, end) <= self._dropped_count(low_end)
            or self._sum(state.refused, end - 0.5, end)
        ):
            return
        # The drop's first 429 came at the ceiling after seconds all taken, and taught a
        # lesson in headroom (2 %) before its cut proved not enough: that was the drop, not
        # jitter, so headroom comes back as far as what the server took before it. Left,
        # the pace went back to 98 % of the ceiling and gave the rest back one accepted
        # request at a time (48.6/s a second later, where the server had taken 49/s).
        # Told 50/s, 40 seeds, 0-39 and 40-79: 50 -> 20 -> 50/s at 3 s and 8 s 1.0645x and
        # 1.0633x -> 1.0625x and 1.0613x, at 4 s and 10 s 1.0763x and 1.0756x -> 1.0745x
        # and 1.0737x; the told drop/return family 1.0894x and 1.0905x -> 1.0881x and
        # 1.0892x; no more 429s. Limits lowered for good at 2-3 s to 15-30/s (600
        # requests): sliding windows unmoved, fixed windows (taken to be back now and then,
        # a second across a boundary taking up to twice the count) 12.3 % and 11.7 % of
        # the requests refused -> 12.4 % and 11.8 %, wall time unmoved.
        back = min(state.took, self.ceiling)
        if target < back:
            state.headroom = max(state.headroom, min(1.0, back / self._ceiling()))
            target = back
        state.rate = target
        state.window = max(state.window, float(math.ceil(target * state.rtt)))
        # The low phase's cuts kept a window of its pace (4-6 in flight at 20/s): a refusal
        # at the ceiling with more in flight than that, the window full, would be a cap's,
        # and a late send caught up and refused sent the window back to it, half the limit
        # for the rest of the batch. Told 50/s, 50 -> 20 -> 50/s at 3 s and 8 s on the
        # machine as measured, the clock anywhere in a bucket, 40 seeds 0-39 and 40-79:
        # 1.0712x and 1.070x -> 1.0695x and 1.067x (with the lesson above alone, 1.079x:
        # one seed 1.10x -> 1.33x); no figure of the LIVE zoo moved. Fixed windows lowered
        # for good, taken to be back now and then, 12.6 % and 12.2 % of the requests
        # refused -> 12.9 % and 12.4 % (1.0327x and 1.0331x -> 1.0321x and 1.0331x).
        state.window_cut = max(state.window_cut, state.window)

    def _dropped_count(self, low_end: float) -> int:
        """Told the limit, the dropped limit's count, ``low_end`` being the bucket of the last
        refused probe's send: the most the server took over any second of whole buckets
        ending from ``_BACK_READ_BEFORE`` before it to ``_BACK_READ_AFTER`` after it (those
        that start before the send history kept, or the first send, left out)."""
        state = self.state
        forgotten = max(state.first_bucket * BUCKET, state.first_sent)
        most = 0
        for step in range(-round(_BACK_READ_AFTER / BUCKET), round(_BACK_READ_BEFORE / BUCKET) + 1):
            end = low_end - step * BUCKET
            if end - 1.0 >= forgotten:
                most = max(most, self._took(end - 1.0, end))
        return most

    def _window_at_first_round_trip(self, now: float) -> None:
        """Told the limit, the first round trip just measured, after a cut that came before
        it (a 429 that came back at once, before any answer): that cut's window counted
        what was in flight then, and none for the round trip it did not know yet. The
        window is never under what the pace needs at the round trip (as a cut's is, once
        one is known), unless it held at least ``_CAP_HELD`` of that (a cap on requests in
        flight refuses once the pace has filled it: about a round trip of sends). A server
        that allows no burst, refusing an early arrival with one request in flight, held a
        window of one (every refusal after it at the ceiling then the window's): 5/s at a
        0.2 s round trip where 50/s was told. (A leaky bucket or a token bucket of burst 1
        answering its 429s at once, told 50/s, 40 seeds: 4.70x the ideal and 14 429s of
        500, now 1.19x and 7; no row of the zoo moved otherwise, told or not.) Whether
        such a cut was a cap's, its pace given back, is judged over the round trip it held
        (see ``_cap_given_back``)."""
        state = self.state
        if self.configured is None or state.window_cut == math.inf:
            return
        needed = self.rate(now) * state.rtt
        if state.window_cut >= _CAP_HELD * needed:
            return  # (a cap's: it refused once the pace had about a round trip in flight)
        needed = float(math.ceil(needed))
        state.window = max(state.window, needed)
        state.window_cut = max(state.window_cut, needed)

    def _cap_given_back(self, sent_at: float, now: float) -> None:
        """Told the limit, an answer at ``now`` to a request sent at ``sent_at``, after a cut
        before any answer (``held_unanswered``): if that cut's 429 came back at once and it
        held at least ``_CAP_HELD_FLOOR`` of what the told pace needs at the shortest round
        trip seen, it was a cap's on requests in flight: the pace it cut (to 0.95 of what
        the first buckets took, with no round trip to weigh the count against) and its
        no-burst mark are taken back, and the window is what it held, as for a cap's first
        refusal after an answer (see ``_cap_refused_first``). Judged at every answer to the
        requests it held, on the shortest round trip, not the first alone: the first answers
        open connections, and come late (live, up to 50 ms, more on a busy machine), so a
        cap seemed to hold under a round trip. Once an answer to a request sent at the cut
        or after comes back, no more. (A cap of 10 in flight answering at once, told 50/s,
        40 seeds 0-39 and 40-79: 1.045x and 1.047x the ideal, now 1.028x and 1.027x with
        the window kept from being probed above (see ``_cap_enough``); with the clock
        starting anywhere in a bucket, as live, 1.065x and 1.067x, now 1.028x and 1.027x.
        Live, the first buckets read 40-45/s, the pace was cut to 38-43/s and took 3 s to
        climb back: 1.12-1.13x, now 1.05-1.08x. No other row moved, told or not.)"""
        state = self.state
        if sent_at >= state.cut_sent:
            state.held_unanswered = 0.0  # (the round trip it held is answered: no cap's)
            return
        rtt = state.rtt_floor
        if (
            state.cut_at - state.cut_sent < _INSTANT_SHARE * rtt
            and state.held_unanswered >= _CAP_HELD_FLOOR * self.ceiling * state.headroom * rtt
        ):
            state.rate = state.cut_rate = max(self.rate(now), self.ceiling * state.headroom)
            state.burstless = math.inf
            state.capped = True
            state.window = state.window_cut = state.held_unanswered
            state.held_unanswered = 0.0

    def _first_round_trip_was_longer(self, sample: float) -> bool:
        """Not told, in slow start: whether the round trip estimate is still the only one
        seen (the first answer's) and ``sample`` is well under it (``_FIRST_RTT_LONGER``).
        The first request also opens the client's connection (live: 223-237 ms, where
        203-207 ms after it), and the smoothed estimate carried that for a dozen answers,
        each growing slow start's pace by less: its ramp reached the limit later, and its
        cut landed lower, for good. With a first answer 25 ms late in the clock-free zoo
        (40 seeds, 0-39 and 40-79): the limit that drops and comes back 1.172x and 1.172x
        the ideal, now 1.166x and 1.165x; a fixed window 1.090x and 1.088x, now 1.072x and
        1.068x; the drop/return family 1.1742x and 1.1762x, now 1.1705x and 1.1703x. No
        row moved by more than 0.002x the other way (a token bucket of burst = rate: 34
        and 35 429s of 500, now 40 and 38, as with a prompt first answer), and with a
        prompt first answer nothing moves (answers differ by a few per cent).
        """
        state = self.state
        return (
            self.configured is None
            and not state.cut
            and state.rtt == state.rtt_floor
            and sample < _FIRST_RTT_LONGER * state.rtt_floor
        )

    def on_rate_limited(  # noqa: PLR0915 - one transition, read top to bottom
        self, sent_at: float, now: float, retry_after: float | None = None
    ) -> bool:
        """The request sent at ``sent_at`` was answered ``429`` at ``now``; return whether it
        cut the rate (``False``: the same event as the last cut). Call :meth:`release` for it
        first, so the window is set from the *other* requests in flight."""
        state = self.state
        self._count(state.refused, sent_at)
        self._count_reread(sent_at, refused=True)
        pause = certain_retry_after(retry_after)
        if pause > 0:
            state.paused_until = max(state.paused_until, sent_at + pause)
        if self._lesson_in_hold_off(sent_at, now):
            return True  # (before judging the cut: a few jittered sends are no dropped limit)
        reading = state.cap_read_at < math.inf
        if self._cap_read_refused(sent_at, now):
            self._window_only(now)
            return False
        reading_ended = reading and state.cap_read_at == math.inf
        if sent_at < state.hold_until and not self._cut_was_wrong(sent_at):
            self._same_event(sent_at)
            return False
        pace = self._recent_pace(sent_at)
        fresh = sent_at >= state.hold_until
        if fresh and self._window_refused(sent_at, pace):
            self._window_only(now)
            return False
        if fresh and self._cap_refused_at_once(sent_at, now, pace):
            self._window_only(now)
            self._probe_refused(now)
            return False
        self._burstless_event(fresh=fresh)
        estimate = peak = pace
        marginal = state.cut and fresh and self._marginal(sent_at)
        found_before = state.found
        overrun = state.cut and self._no_burst_overrun(sent_at)
        state.no_burst = state.no_burst or overrun
        cap_first = fresh and self._cap_refused_first(sent_at, pace)
        # A cap's first refusal past the run's first bucket (in it, "more in flight than all
        # sent before the bucket" holds of any send): the cap's alone, the pace stays. (A
        # leaky bucket told too much refuses the second send, answers back: that cut stands.)
        cap_only = cap_first and math.floor(sent_at / BUCKET) > math.floor(
            state.first_sent / BUCKET
        )
        taught = not cap_only and self._lesson(sent_at, pace, fresh=fresh, marginal=marginal)
        if fresh and (state.cut or self.configured is not None):
            self._count_quick_probes(sent_at, now, pace)
        # A marginal refusal may be a send that caught up after a late one, at a server
        # that allows no burst: no catch-up from now on.
        if marginal and self._burstless_refusal(pace):
            state.burstless = min(state.burstless, pace)
        state.marginal_cut = marginal or taught  # judged at once: see _cut_was_wrong
        state.corrected = not fresh  # judged later: see _cut_was_wrong
        accepted = self._accepted_rate(sent_at, _MARGINAL_SPAN if marginal else MEASURE_SPAN)
        if accepted is None and not fresh:
            # A cut that was not enough, judged on the few sends since it (a limit that just
            # dropped refuses them all): what the server accepted of them, at that pace.
            sent, refused = self._since_cut(sent_at)
            accepted = pace * (sent - refused) / max(1, sent)
        if accepted is not None and accepted < pace:
            estimate = accepted
            if not marginal:
                # The pace may be the limit (a leaky bucket refuses as soon as it is over)
                # or far above it (a window filled during a ramp): recover towards halfway.
                peak = math.sqrt(accepted * pace)
                last_second = self._accepted_rate(sent_at, _MARGINAL_SPAN)
                if last_second is not None and accepted <= last_second:
                    # ... but not above what the server accepted over the last second: a
                    # ramp that filled a window went far above its rate, and a limit that
                    # dropped is found again from below (a server that refuses only what is
                    # over its rate ends slow start re-read upwards, see _reread_first_cut).
                    peak = min(peak, last_second)
        if not fresh and self.configured is not None:
            # (Told only: not told, a limit that dropped is corrected with the second
            # before the drop in those two seconds, and the quick probes aimed there were
            # all refused in the low phase; a sliding window at 50/s, 30/s from 3.5 s to
            # 10 s, was not back within 10 % of 50/s by the batch's end on 4 seeds of 40.)
            peak = self._correction_peak(sent_at, pace, peak)
        if overrun and not fresh and accepted is not None and accepted < pace:
            # What it took was a lower bound (overrun, it takes one request in two).
            peak = max(peak, math.sqrt(accepted * pace))
        current = self.rate(now)
        if state.cut:
            # After slow start (whose ramp may overshoot by more), one event at most halves
            # the rate: a measure over a short or fully refused span (a window draining, a
            # limit that just dropped) must not send it to the floor.
            estimate = max(estimate, current / 2)
        ceiling = self._ceiling() * state.headroom
        new_rate = max(self._min_rate, min(ceiling, current, self._backoff * estimate))
        if taught:
            new_rate = min(current, ceiling)  # the lower ceiling is the cut
        if cap_only:
            new_rate = current  # the window is the cut (see below)
        if reading_ended:
            # No cap's: a window the ramp filled refused the pace taken back. Its count is
            # what it took over the second before (the cut's round trip at half of it
            # included): the cut comes up to BACKOFF of that, and the recovery aims no
            # higher than _FOUND_ROSE times it (not at the pace refused, up to 1.4 times it).
            count = self._count_before(sent_at)
            new_rate = min(current, max(new_rate, self._backoff * count))
            if count > 0:
                peak = min(peak, _FOUND_ROSE * count)
        self._mark_cut_sent(sent_at, accepted)
        state.reread_until = self._instant_reread_until(sent_at, now)
        state.rate = state.cut_rate = new_rate
        state.refused_pace = max(_PEAK_MARGIN * peak, new_rate)
        # (Not after a probe above the limit found that showed it rose: see _told_refused.)
        rose = found_before < pace and state.found == math.inf
        self._aim(peak, estimate, capped=marginal and not rose)
        state.cut = True
        self._mark_cut(now)
        state.hold_until = self._hold_from(sent_at, now, pace) + self._hold_off(pace)
        if overrun and not fresh:
            self._hold_off_overrun(now)
        # Requests in flight: as many as the server held when it refused this one, but never
        # fewer than the new pace needs at the usual round trip.
        needed = math.ceil(new_rate * state.rtt)
        held = state.in_flight - self._booked_ahead(now)
        if cap_first:
            # A cap's first refusal: it held every request sent before this one (the count
            # now, with answers back and sends since, reads one short of that now and then:
            # live, a window of 9 held 10 in flight to 44/s for the rest of the run).
            held = max(held, self._sent_before(sent_at, pace))
            if cap_only:
                needed = 1  # (the pace stays: the cap, not the round trip, bounds the window)
                state.capped = True
        if state.window_cut == math.inf:
            state.crowded[:] = _ring()  # (the most in flight per bucket, until this first cut)
        state.window = state.window_cut = min(state.window, float(max(1, held, needed)))
        if self.configured is not None and state.rtt == 0.0:
            state.held_unanswered = state.window_cut  # (judged by _cap_given_back)
        if self._books_ahead and fresh and not state.marginal_cut:
            self._wait_for_refill(sent_at, retry_after)
        return True

    def _hold_from(self, sent_at: float, now: float, pace: float) -> float:
        """Where a cut's hold-off starts, for a 429 at ``now`` to a request sent at
        ``sent_at`` at ``pace``: at ``now``; told the limit, for a 429 that came back at once
        (in under ``_INSTANT_SHARE`` of the shortest round trip) at a pace under what the
        server took (a limit that dropped under it, quick probes left), a round trip after
        the send, where a 429 after the latency would have started it. Started at the send,
        the hold-off covered a round trip less of sends: the pace grew again while the
        dropped limit's window still refused, and each refusal then spent a quick probe (all
        three before the limit came back: 50/s, 20/s from 4 s to 10 s, told 50/s, 429s at
        once, 40 seeds 0-39 and 40-79: 1.221x and 1.215x the ideal, now 1.126x and 1.123x;
        20/s from 3 s to 8 s 1.167x and 1.169x, now 1.110x; where the 429s come after the
        latency, 1.09x and 1.08x)."""
        state = self.state
        if (
            self.configured is None
            or not state.quick_probes
            or not pace < state.took
            or not self._came_back_at_once(sent_at, now)
        ):
            return now
        return max(now, sent_at + state.rtt)

    def _hold_off(self, pace: float) -> float:
        """Seconds a cut for a refusal at ``pace`` holds off: ``max(HOLD, 2 RTT)``; told the
        limit, on the climb back to what the server took before a limit dropped under it
        (quick probes left, ``pace`` under what it took), ``_DROPPED_HOLD`` (not under two
        round trips): such a refusal is one probe's, not a window's cluster, and the limit
        may come back at any moment."""
        state = self.state
        hold = HOLD
        if self.configured is not None and state.quick_probes and pace < _PEAK_MARGIN * state.took:
            hold = _DROPPED_HOLD
        return max(hold, 2 * state.rtt)

    def _note_crowded(self, now: float, offset: int) -> None:
        """Told the limit, a send just granted at ``now`` (its bucket at ``offset``): counted
        in ``crowded`` if it went with more requests in flight than the window the last cut
        set (the window grew above it since), the window full. (Not asked by a store that
        books ahead: it hears of answers late, and its count in flight holds some answered.
        Four processes sharing a leaky bucket told its 40/s: 1.21x -> 1.33x the ideal.)"""
        state = self.state
        if self.configured is None:
            return
        held = state.in_flight - self._booked_ahead(now)
        if state.window_cut == math.inf:
            # No cut yet: the most in flight of the bucket's sends (see _cap_refused_first).
            state.crowded[offset] = max(state.crowded[offset], held)
            return
        if held > state.window_cut and held > state.window - 1:
            state.crowded[offset] += 1

    def _window_refused(self, sent_at: float, pace: float) -> bool:
        """Told the limit, whether a refusal of a request sent at ``sent_at`` at ``pace``,
        after the last event's hold-off, is the window's: sent at the ceiling, with more in
        flight than the window the last cut set, the window full. A server that caps the
        requests in flight refused the one above its cap: the pace is not in question (a
        lesson of headroom there held the pace at 47-48/s, and 10 in flight took 46/s)."""
        state = self.state
        if self.configured is None or not self._near_ceiling(pace):
            return False
        offset = math.floor(sent_at / BUCKET) - state.first_bucket
        return state.window_cut < math.inf and 0 <= offset < BUCKETS and state.crowded[offset] > 0

    def _cap_refused_first(self, sent_at: float, pace: float) -> bool:
        """Told the limit, whether the first refusal (no cut yet) of a request sent at
        ``sent_at`` at ``pace`` is a cap's on requests in flight: in the run's first round
        trip (no answer back yet, to a bucket: every send so far in flight), sent with more
        in flight than the pace sends in a round trip (``pace * rtt``: the first answer came
        late, as it does when it opens the connection). Such a cap refuses the request above it
        however evenly the sends went, so its refusal says nothing of a server that allows
        no burst. (Marked as one, late sends were no longer caught up, and the pace held
        then, about 47/s, kept a cap of 10 in flight at 0.2 s from refusing again to take
        the mark back: told 50/s, 1.08x the ideal live.) A server that allows no burst
        refuses an early arrival with few in flight, or after answers came back."""
        state = self.state
        offset = math.floor(sent_at / BUCKET) - state.first_bucket
        if (
            state.window_cut < math.inf
            or state.rtt == 0.0  # no round trip to weigh the count against
            or not 0 <= offset < BUCKETS
            or math.floor(state.first_sent / BUCKET) < state.first_bucket
        ):
            return False
        # The most in flight of the bucket's sends: more than all sent before the bucket if
        # one of them went before any answer came back.
        held = state.crowded[offset]
        return held > sum(state.sent[:offset]) and held > pace * state.rtt

    def _sent_before(self, sent_at: float, pace: float) -> int:
        """In the run's first round trip, paced at ``pace`` from the first send (late sends
        catch up on the schedule), the requests sent before the one sent at ``sent_at``: no
        more than the most in flight of its bucket's sends, less itself."""
        state = self.state
        offset = math.floor(sent_at / BUCKET) - state.first_bucket
        slots = math.floor((sent_at - state.first_sent) * pace + 1e-9)
        return min(state.crowded[offset] - 1, slots)

    def _cap_refused_at_once(self, sent_at: float, now: float, pace: float) -> bool:
        """Not told, the limit found: whether a 429 that came back at once (see
        ``_instant_reread_until``), for a request sent at ``sent_at`` at ``pace``, after the
        last event's hold-off, is the window's: the requests in flight then are the ones the
        server holds, and it refused with at least as many as the last cut's window (what it
        held at that cut), at the ceiling. One refused with fewer shows a server that refuses
        under that window: no cap on requests in flight, and no later refusal is taken for
        one's."""
        state = self.state
        if self.configured is not None or state.found == math.inf or state.below_window:
            return False
        if not self._came_back_at_once(sent_at, now):
            return False
        held = state.in_flight - self._booked_ahead(now)  # (the refused one released)
        if held < state.window_cut:
            state.below_window = True
            return False
        return held + 1 > state.window and self._near_ceiling(pace)

    def _probe_refused(self, now: float) -> None:
        """Not told, a refusal at ``now`` that was the window's (``_cap_refused_at_once``):
        a pace probing above the limit found goes back to it, and probes again only
        ``PROBE_AFTER`` seconds on (the window, not the pace, keeps such a server from
        refusing: a pace left to probe on climbed to hundreds a second)."""
        state = self.state
        state.rate = min(self.rate(now), self._ceiling() * state.headroom)
        state.hold_until = now

    def _window_only(self, now: float) -> None:
        """A refusal that is the window's (``_window_refused``), at ``now``: the window goes
        back to what the last cut set, and grows above it only ``PROBE_AFTER`` seconds after
        a hold-off; the pace stays. Nor does the server refuse sends that come close
        together: a refusal at the ceiling that took it for one (no catch-up since) was the
        cap's too, and without catching up late timers the pace lost 5 % of its sends."""
        state = self.state
        state.window = state.window_cut
        state.window_grows_at = now + max(HOLD, 2 * state.rtt) + PROBE_AFTER
        state.capped = True
        state.burstless = math.inf

    def _window_paces(self) -> bool:
        """Told the limit, whether the window alone paces the sends: the server refused a
        request above a window (a cap on requests in flight: ``capped``), the last cut kept
        the told pace (a cap's: no lesson of headroom, no lower limit since), and the window,
        each of its requests out for at least the shortest round trip seen, carries no more
        than the told limit. A send the window allows then goes without waiting for the
        pace's next slot, only :data:`CATCH_UP` of a spacing after the last send: the cap is
        what the server counts, and the pace's schedule kept a place the cap had freed
        empty until its slot (answers come back unevenly, and the pace, 1.5 % under the
        told limit, is about what the cap carries: 10 in flight at a 0.2-0.21 s latency
        took 48.4/s of the 48.8/s they carry, now 48.6/s). Sends still go apart: live,
        sent at once (a place freed goes with no gap), 5-55 % of the requests left within
        3 ms of another, came back 1.5-8 ms later than the rest (the simulator working on
        them together), and a cap's clumps never spread again (each send follows an
        answer): the round trip grew by up to 3 ms and took back all the gain. On the
        simulated clock (told, 40 seeds 0-39 and 40-79): 10 in flight 1.029x and 1.029x
        the ideal, now 1.024x and 1.024x; answering at once 1.028x and 1.027x, now 1.020x
        and 1.021x; 20 in flight at 100/s 1.051x and 1.051x, now 1.045x and 1.045x (at
        once 1.050x, now 1.042x); no other row moved, told or not, nor the drop/return
        family, and no more 429s (with no gap: 1.021x, 1.018x and 1.042x).
        Live, six traced runs each alternated with the code before: a freed place waited
        0.5-1.1 ms for the pace on average, and the batch took 0.05-0.11 s more than the
        round trip and the paced start allow (10.52-10.61 s); now 0.02-0.06 s
        (10.51-10.55 s)."""
        state = self.state
        return (
            self.configured is not None
            and state.capped
            and state.cut_rate >= self.ceiling
            and state.rtt_floor < math.inf  # (a round trip seen)
            and state.window <= self.configured * state.rtt_floor
        )

    def _grow_window(self, now: float) -> None:
        """The window held senders back: one more per window of answers, but not above the
        one the last cut set until ``window_grows_at``, nor (told the limit) while that one
        is a cap's that keeps nearly what the pace needs in flight (``_cap_enough``)."""
        state = self.state
        grown = state.window + 1.0 / state.window
        if now < state.window_grows_at or self._cap_enough(now):
            grown = min(grown, max(state.window, state.window_cut))
        state.window = grown

    def _cap_enough(self, now: float) -> bool:
        """Told the limit, whether the window may not grow above the one the last cut set
        at ``now``, the server having refused a request above a window (a cap on requests
        in flight: its first refusal, or one that was the window's): that window keeps at
        least ``_CAP_ENOUGH`` of what the pace needs at the round trip in flight. A window
        one above it could take at most that much more, and a cap that did not rise refuses
        it: a 429, and its retry's wait (at the batch's end, the batch's). (10 in flight at
        a 0.2 s latency, told 50/s: one such probe every 3.5 s or so; 40 seeds 0-39 and
        40-79, 1.033x and 1.033x the ideal and 4.6 and 4.7 429s, now 1.029x and 1.029x and
        1.6 and 1.7; its 429s at once, 1.032x and 1.031x, now 1.028x and 1.027x. No other
        row moved, told or not.)"""
        state = self.state
        return (
            self.configured is not None
            and state.capped
            and state.window_cut >= _CAP_ENOUGH * self.rate(now) * state.rtt
        )

    def _burstless_refusal(self, pace: float) -> bool:
        """Whether a marginal refusal at ``pace`` may be a send that caught up after a late
        one, at a server that allows no burst (see :attr:`AimdState.burstless`). Told the
        limit, only at the ceiling: well under it, the limit dropped under the told one, and
        the pace is what it refused. (Marked there, the pace held no send closer than a
        spacing once the limit came back, and lost the late timers' 5 %.)"""
        return self.configured is None or self._near_ceiling(pace)

    def _burstless_event(self, *, fresh: bool) -> None:
        """Told the limit, a refusal that is not the window's: the first of an event keeps
        the burstless mark it found; one that shows the event's cut was not enough (the
        limit dropped: many refused, not one send caught up too close) takes back the mark
        that first refusal made."""
        state = self.state
        if self.configured is None:
            return
        if fresh:
            state.burstless_before = state.burstless
        else:
            state.burstless = state.burstless_before

    def _burst_taken(self, sent_at: float) -> None:
        """Not told, an answer accepted for a request sent at ``sent_at``: if the server
        took more than ``_BURST_TAKEN`` times the pace of the no-burst mark (see
        :attr:`AimdState.burstless`) over the second before it, refusing none of it, the
        mark goes. Sends then went closer than a spacing at that pace, all accepted: the
        refusal that made it was no send caught up too close, but a limit that dropped (a
        probe refused in the low phase, at 30-45/s of a window down to 20/s), and with it
        late sends were never caught up once the limit came back: the pace lost the late
        timers' 4 %. (50/s, 20/s from 3 s to 8 s, 40 seeds, 0-39 and 40-79: 1.134x and
        1.137x -> 1.126x and 1.128x; what the server took 4-5 s after the limit came back
        was under 46/s on 26 and 24 seeds, now 7 and 8. 20/s from 4 s to 10 s: 1.150x and
        1.150x -> 1.146x and 1.145x; the drop/return family 1.1633x and 1.1629x -> 1.1613x
        and 1.1605x. No row of the zoo moved: a server that allows no burst refuses a send
        caught up, so its pace stays near the mark. At a tenth above the mark: the same
        within 0.003x, but a token bucket of burst 1 whose limit rose from 30/s to 50/s
        was found again after 10.5 s on one seed of six that a test runs.)"""
        state = self.state
        if self.configured is not None or state.burstless == math.inf:
            return
        start = _bucket_start(sent_at - _MARGINAL_SPAN)
        end = _bucket_start(sent_at)
        if start < max(state.cut_at, state.first_sent) or self._sum(state.refused, start, end):
            return
        if self._took(start, end) >= _BURST_TAKEN * state.burstless * (end - start):
            state.burstless = math.inf

    def _no_burst_overrun(self, sent_at: float) -> bool:
        """Told the limit, a store that books ahead, a refusal of a request sent at
        ``sent_at`` after the first cut (a cut that was not enough, or the first refusal
        after its hold-off): whether the server allows no burst (see ``_REFILL_SPAN``'s note
        below it): the first refusal came from the very first sends, and at most about half
        of the sends since the cut were refused."""
        state = self.state
        if not self._books_ahead or self.configured is None:
            return False
        if state.cut_sent - state.first_sent >= _REFILL_SPAN:
            return False  # a burst was let through first (or a later event)
        sent, refused = self._since_cut(sent_at)
        return sent >= _WRONG_CUT_SENDS and refused <= _REREAD_SHARE * sent

    def _hold_off_overrun(self, now: float) -> None:
        """Told the limit, a store that books ahead, the correction at ``now`` that shows a
        server that allows no burst told too much (``_no_burst_overrun``): it holds off
        ``_OVERRUN_HOLD`` (or two round trips), not ``HOLD``. Such a server refuses at once:
        what is left of the event is the sends booked at the pace corrected, and the reports
        of their answers."""
        state = self.state
        state.hold_until = min(state.hold_until, now + max(_OVERRUN_HOLD, 2 * state.rtt))

    def _judged_since(self) -> float:
        """Since when a refusal is judged marginal (``_marginal``), at the least: after a
        correction at a server that allows no burst (a store that books ahead:
        ``AimdState.no_burst``), the end of its hold-off, whose sends are the event's (booked
        at the pace corrected, then just after it); ``-inf`` otherwise."""
        state = self.state
        return state.hold_until if state.no_burst and state.corrected else -math.inf

    def _lesson_in_hold_off(self, sent_at: float, now: float) -> bool:
        """A store that books ahead, in the hold-off of a lesson in headroom at a server
        that allows no burst: whether a 429 for a request sent at ``sent_at`` since that
        lesson, at the pace it set and near the ceiling, teaches more headroom at once
        (lowering the ceiling again, with a hold-off of its own). Otherwise the hold-off
        took no lesson for a second: a pace still too high for the jitter was refused many
        times meanwhile, and the first refusal after it, with more than a fifth refused,
        was no lesson but a cut to 95 % of what the server took (a 40/s leaky bucket: to
        27-28/s, then seconds back)."""
        state = self.state
        if (
            not state.no_burst
            or not state.marginal_cut
            or state.burstless == math.inf
            or not state.cut_at <= sent_at < state.hold_until
        ):
            return False
        pace = self._recent_pace(sent_at)
        if pace > self.rate(now) or not self._near_ceiling(pace):
            return False  # sent before the lesson took effect, or refused far under it
        ceiling = self._ceiling()
        headroom = max(MIN_HEADROOM / HEADROOM, LEARNED_HEADROOM * pace / ceiling)
        if headroom >= state.headroom:
            return False  # as low as it goes: let the cut be judged
        state.headroom = headroom
        state.rate = state.cut_rate = min(self.rate(now), ceiling * headroom)
        state.refused_pace = state.aim = state.aim_cap = state.rate
        self._mark_cut(now)
        state.hold_until = now + max(HOLD, 2 * state.rtt)
        return True

    def _mark_cut(self, now: float) -> None:
        """A cut (or a lesson in headroom) at ``now``: noted, with the last slot booked by
        then (a store that books ahead: see ``AimdState.cut_booked``)."""
        state = self.state
        state.cut_at = now
        state.cut_booked = max(now, state.last_slot) if self._books_ahead else -math.inf

    def _same_event(self, sent_at: float) -> None:
        """A 429 for a request sent at ``sent_at``, in the last cut's hold-off: once the event
        is a cluster of at least ``_CLUSTER`` of them, the slow recovery aims lower."""
        state = self.state
        if self._sum(state.refused, state.cut_sent, sent_at + BUCKET) >= _CLUSTER:
            state.aim = min(state.aim, state.aim_cap)

    def _wait_for_refill(self, sent_at: float, retry_after: float | None) -> None:
        """A store that books ahead, refused by a fresh cut that is no marginal refusal, with
        a ``Retry-After`` of whole seconds (its last second uncertain): if the sends of the
        second before began at least ``_REFILL_SPAN`` before this one (after an idle spell,
        or at the start), no send until a second after the first of them. A one-second
        window they filled has room again by then (a sliding window frees that first send's
        place; a fixed window that started with it resets), and a send before then is
        refused too, its retry waiting out the whole second: told 1.5 times a window's
        limit, four processes' 16 senders were all refused in the first window's last
        third, and nothing was sent from 0.94 s to 1.68 s. Continuous sends begin a second
        before any refusal: no wait."""
        state = self.state
        capped = capped_retry_after(retry_after)
        if capped is None or capped < 1.0 or not capped.is_integer():
            return
        low, high = self._buckets(sent_at - 1.0, sent_at)
        first = next((index for index in range(low, high) if state.sent[index]), None)
        if first is None:
            return
        began = max((state.first_bucket + first) * BUCKET, state.first_sent)
        if sent_at - began >= _REFILL_SPAN:
            state.paused_until = max(state.paused_until, min(began + 1.0, sent_at + capped))

    def _aim(self, peak: float, estimate: float, *, capped: bool) -> None:
        """After a cut: the slow recovery aims just under ``peak``; if ``capped`` (a marginal
        refusal) and the event proves a cluster, just under ``_FOUND_ROSE`` times
        ``estimate`` (what the server accepted over the second before), if that is lower."""
        state = self.state
        state.aim = state.refused_pace
        aim = min(peak, _FOUND_ROSE * estimate) if capped else peak
        state.aim_cap = max(_PEAK_MARGIN * aim, state.cut_rate)

    def _lesson(self, sent_at: float, pace: float, *, fresh: bool, marginal: bool) -> bool:
        """Whether a refusal of a request sent at ``pace`` teaches headroom under a ceiling
        (the configured limit, or one found: perhaps just now) instead of cutting the rate."""
        state = self.state
        found = self._found(sent_at, pace) if marginal and self.configured is None else None
        if found is None and marginal:
            found = self._found_under_told(pace)
        if found is not None:
            self._hold(found, pace)  # the limit, found: held as if told from now on
            return True
        taught = fresh and self._ceiling() < math.inf and self._told_refused(sent_at, pace)
        if not taught and self.configured is None and state.found < math.inf:
            # Not told, a refusal that is no lesson at the limit found (refused far below
            # it, most of a pace refused, or a cut that was not enough): that limit was
            # wrong (slow start's end misread a window) or has dropped: forget it, and find
            # it again from a cut, as at first.
            state.found = math.inf
            state.headroom = 1.0
        return taught

    def _hold(self, limit: float, pace: float) -> None:
        """Not told, the limit is found: from now on it is held as if told, one lesson of
        headroom under it, and no send closer than a spacing at ``pace``."""
        state = self.state
        state.found = limit
        state.found_by_rate = False
        state.headroom = LEARNED_HEADROOM
        state.burstless = min(state.burstless, pace)

    def _told_refused(self, sent_at: float, pace: float) -> bool:
        """Told the limit (or not told, once it is found), a refusal of a request sent at
        ``pace`` after the last event's hold-off: whether it teaches headroom (lowering the
        ceiling instead of cutting the rate)."""
        state = self.state
        ceiling = self._ceiling()
        if not self._near_ceiling(pace):
            return False
        # Refused at the limit: perhaps a send that caught up after a late one came too
        # close for a server that allows no burst. No catch-up from now on.
        # (Told only: not told, at a cap of 10 requests in flight whose limit was found,
        # 6.5 % of the requests were refused on one seed of three, where 2.5 %.)
        jitter = self.configured is not None and state.burstless < math.inf
        if not self._cap_refused_first(sent_at, pace):
            state.burstless = min(state.burstless, pace)
        if not self._marginal(sent_at) and not (jitter and self._jitter_refused(sent_at)):
            return False
        if pace > ceiling:
            # A probe above the limit found (see _probe), refused: back to that limit, unless
            # the server took well above it over the last second: the limit rose, and is
            # found again (from a cut, as before it was found).
            took = self._accepted_rate(sent_at, _MARGINAL_SPAN) or 0.0
            if took > _FOUND_ROSE * ceiling:
                state.found = math.inf
                state.headroom = 1.0
                return False
            state.ramp_seen = 0.0  # (if it probed back up to slow start's ramp: no more)
            self._refound_higher(sent_at, pace)
            return True
        # Refused near the limit with all else accepted: the send times jitter more than the
        # headroom allows (a limit that dropped is refused far below the ceiling, or not
        # marginally, or judged at once to be one: see _cut_was_wrong). Stay under that pace.
        learned = LEARNED_HEADROOM * pace / ceiling
        state.headroom = max(MIN_HEADROOM / HEADROOM, min(state.headroom, learned))
        return True

    def _refound_higher(self, sent_at: float, pace: float) -> None:
        """Not told, a probe above a limit found at slow start's end (a server that refuses
        only what is over its rate), refused at ``pace`` more than ``_REFOUND_ABOVE`` times
        that limit, the server having taken every send of the ``_REFOUND_SPAN`` before it:
        the limit was found low, and is found again at ``_REFOUND`` of the pace refused.
        (Such a server also refuses a send that arrives a little early, and slow start's
        ramp, which sends what it banked at once, met one below the limit on half the seeds:
        a leaky bucket at 50/s was found at 39-45/s and held there, a refused probe going
        back to it, as what the server took over the second before, the probe's ramp, was
        under a tenth above it.)"""
        state = self.state
        if not state.found_by_rate or pace <= _REFOUND_ABOVE * state.found:
            return
        low, high = self._buckets(sent_at - _REFOUND_SPAN, sent_at)
        if high <= low or not sum(state.sent[low:high]) or any(state.refused[low:high]):
            return
        state.found = _REFOUND * pace
        state.headroom = LEARNED_HEADROOM
        # (The no-burst mark the lower limit set goes with it: no send closer than a spacing
        # at the pace refused. Kept lower, 1.239x.)
        state.burstless = pace

    def _jitter_refused(self, sent_at: float) -> bool:
        """Whether at most ``_JITTER_SHARE`` of the sends since the last cut (within the
        measuring span) up to the bucket of ``sent_at`` were refused: at a server that allows
        no burst, as many as a jittered send time refuses."""
        state = self.state
        start = max(state.cut_at, sent_at - MEASURE_SPAN)
        end = sent_at + BUCKET
        sent = self._sum(state.sent, start, end)
        share = _NO_BURST_JITTER_SHARE if state.no_burst else _JITTER_SHARE
        return sent > 0 and self._sum(state.refused, start, end) <= share * sent

    def _near_ceiling(self, pace: float) -> bool:
        """Whether ``pace`` is at the ceiling (``_NEAR_CEILING`` of it or more, headroom
        learned included): a refusal there may be jitter, or a cap's, not a lower limit."""
        return pace >= _NEAR_CEILING * self._ceiling() * self.state.headroom

    def _ceiling(self) -> float:
        """The pace the policy keeps under, before the headroom learned: the configured
        limit's, or the limit found (``inf``: neither)."""
        if self.configured is None:
            return self.state.found
        return min(self.ceiling, self.state.found)  # (told, found only if no_burst)

    def _probe(self, now: float) -> float:
        """How far above the limit found the pace may go at ``now``, as a factor: after
        :data:`PROBE_AFTER` seconds past the last hold-off, along the recovery's cubic.

        A limit found under what slow start's ramp got through (``ramp_seen``: the limit
        dropped while slow start's cut held, and that ramp is all the client saw of the
        level before) is probed back up to it sooner (``_RAMP_PROBE_AFTER``), within
        :data:`QUICK_PROBE` seconds, and on from it along the slow cubic (the ramp's take
        is an average, short of the old level): once, until such a probe is refused."""
        state = self.state
        if state.found == math.inf:
            return 1.0
        elapsed = now - state.hold_until
        slow = 1.0 + _CUBIC * max(0.0, elapsed - PROBE_AFTER) ** 3
        back = state.ramp_seen / state.found
        since = elapsed - _RAMP_PROBE_AFTER
        if back <= 1.0 or since <= 0:
            return slow
        quick = 1.0 + (back - 1.0) * (since / QUICK_PROBE) ** 3
        if quick < back:
            return max(slow, quick)
        return max(slow, back * (1.0 + _CUBIC * (since - QUICK_PROBE) ** 3))

    def _found_under_told(self, pace: float) -> float | None:
        """Told the limit, at a server that allows no burst told too much (``no_burst``: a
        store that books ahead), no limit found yet: the limit a marginal refusal at
        ``pace`` finds (``None``: none). Far under the told ceiling (under
        ``_NEAR_CEILING`` of it), the told figure is wrong: the pace refused is the limit,
        held as if told from then on, and refusals near it teach headroom rather than cut
        the pace by 5 % again and again (a 40/s leaky bucket told 60/s saw-toothed between
        32/s and 38/s)."""
        state = self.state
        if not state.no_burst or state.found < math.inf or self._near_ceiling(pace):
            return None
        return pace

    def _found(self, sent_at: float, pace: float) -> float | None:
        """Not told the limit, and not yet found: the limit a marginal refusal at ``pace``
        finds (``None``: none): when the last marginal refusal was at nearly the same pace,
        and the server took nearly this pace over the second before it, what it took."""
        state = self.state
        last, state.marginal_pace = state.marginal_pace, pace
        if state.found < math.inf or abs(pace - last) > _FOUND_NEAR * pace:
            return None
        if sent_at - max(state.first_sent, state.cut_at) < _MARGINAL_SPAN:
            return None
        took = self._accepted_rate(sent_at, _MARGINAL_SPAN)
        if took is None or took < _FOUND_TOOK * pace:
            return None
        return took

    def _mark_cut_sent(self, sent_at: float, accepted: float | None) -> None:
        """A cut for a 429 to a request sent at ``sent_at``: if it ends slow start, the
        answers from that request to the cut are to be re-read (this one refused), and (not
        told) what the server ``accepted`` of the ramp is kept (see ``_count_quick_probes``)."""
        state = self.state
        if not state.cut and self.configured is None:
            state.ramp_took = state.ramp_seen = accepted or 0.0
        state.reread = not state.cut
        state.reread_answers = state.reread_refused = 1
        state.cut_sent = sent_at

    def _instant_reread_until(self, sent_at: float, now: float) -> float:
        """A cut that ends slow start, for a 429 to a request sent at ``sent_at`` that came
        back at ``now``: where the sends re-read end if that 429 came back at once (in under
        ``_INSTANT_SHARE`` of the shortest round trip of an accepted request), before any
        answer to the sends around it: a round trip past the cut (``-inf`` otherwise: at the
        cut). Those that left at the cut's pace then say what the sends after the refused
        one would have said (a cap on requests in flight refuses none of them, and is read
        as a server that refuses only what is over its rate, as when its 429s come late)."""
        state = self.state
        if state.cut or not self._came_back_at_once(sent_at, now):
            return -math.inf
        return now + state.rtt

    def _reread_end(self) -> float:
        """Where the sends re-read at slow start's end end: at the cut, or a round trip
        past it after a 429 that came back at once (see ``_instant_reread_until``)."""
        state = self.state
        return max(state.cut_at, state.reread_until)

    def _count_reread(self, sent_at: float, *, refused: bool) -> None:
        """Count an answer to a request sent at ``sent_at`` for the re-read of slow start's
        end, if it is one of the sends from the first refused one to the cut."""
        state = self.state
        if state.reread and state.cut_sent <= sent_at < self._reread_end():
            state.reread_answers += 1
            state.reread_refused += refused

    def _reread_first_cut(self, now: float) -> None:
        """Once the sends from the first refused one to the cut that ended slow start are
        all answered: if the server refused about half of them or fewer, it refuses only what is
        over its rate (a token or leaky bucket, not a window filled by the ramp, which
        refuses all until it drains), so what it accepted from them is its limit, not the
        ramp's average the cut was set from: cut to that instead, and recover to it."""
        state = self.state
        state.reread = False
        start, end = state.cut_sent, self._reread_end()
        sent, refused = state.reread_answers, state.reread_refused
        if sent < _WRONG_CUT_SENDS:
            return
        span = end - start
        accepted = (sent - refused) / span
        if refused >= _REREAD_SHARE * sent:
            # (Not after a 429 that came back at once: those re-reads weigh the ramp's own
            # sends after the first refused one, and these went at the cut's pace.)
            instant = state.reread_until > state.cut_at
            if self.configured is None and refused <= _ALL_REFUSED * sent and not instant:
                self._reread_spent_burst(now, accepted)
                self._reread_full_window(now, accepted)
            return
        # What it accepted, or (a queue-free leaky bucket accepts one request in two just
        # above its rate) the pace it accepted all of just before the first refusal, if
        # that is not far above (a token bucket's burst let a much faster ramp through).
        before = self._recent_pace(start - BUCKET)
        if self._reread_took_all_at_once(now, refused, accepted, before):
            return
        limit = before if accepted < before <= 2 * accepted else accepted
        if self._reread_half_window(refused, sent, accepted, limit):
            self._reread_full_window(now, accepted)
            return
        rate = min(self.ceiling * state.headroom, self._backoff * limit)
        if rate > self.rate(end):
            state.rate = state.cut_rate = rate
            state.refused_pace = max(state.refused_pace, _PEAK_MARGIN * limit)
            state.aim = max(state.aim, _PEAK_MARGIN * limit)
            if self.configured is None:
                # Not told: such a server's limit is what it accepted, found (see _found).
                self._hold(limit, limit)
                state.found_by_rate = True
                state.rate = state.cut_rate = LEARNED_HEADROOM * limit

    def _reread_half_window(self, refused: int, sent: int, accepted: float, limit: float) -> bool:
        """Not told, slow start's end re-read: whether the server, refusing half of the
        sends from the first refused one to the cut or more but under ``_REREAD_SHARE`` of
        them, is still a sliding window the ramp filled, whose count is above ``limit`` (what
        reading it as a server that refuses only over its rate would find): what it took of
        them (``accepted``) is ``_WINDOW_KEPT_LOW`` to ``_WINDOW_HALF_KEPT_HIGH`` times what
        it took of the sends one second before. At 0.2 s round trips a server that refuses
        only over its rate took 1.3 times as much and more there (its ramp a second before
        was well under its rate); a window, about as much, and read as the former at 100/s it
        was held at about 70 % of its count, refusing nothing: a limit found too low is never
        contradicted, one found too high is by the next refusal that is no lesson.
        (At 0.3 s round trips a token bucket of burst 1 at 50/s also took about as much: its
        count over the ramp's second is under the pace it took in full, and it is not read
        as a window.) A sliding window at 100/s, 40 seeds 0-39 and 40-79: 1.263x and 1.255x
        the ideal, now 1.248x and 1.248x (seeds 21, 31 and 52 1.565x, now 1.24-1.25x); at
        30/s, 50/s (told or not, at once or not, the drop/return family) and 70/s, and
        answering after 0.1 s or 0.25-0.35 s (50/s and 100/s, 20 seeds), the same."""
        state = self.state
        if self.configured is not None or state.reread_until > state.cut_at:
            return False
        if not 2 * refused >= sent or refused >= _REREAD_SHARE * sent:
            return False
        before = self._took_a_second_before()
        if not _WINDOW_KEPT_LOW * before <= accepted <= _WINDOW_HALF_KEPT_HIGH * before:
            return False
        return self._window_count() > limit

    def _window_count(self) -> float:
        """What the server took over the second before the first refusal that ended slow
        start, per second (whole buckets, the refused send's bucket included: its sends
        before that one filled a sliding window); 0 with too little history."""
        state = self.state
        start = state.cut_sent + BUCKET - _LEAD_SPAN
        low = _bucket_start(max(start, state.first_sent))
        high = _bucket_start(state.cut_sent) + BUCKET
        if high - low < _MIN_SPAN:
            return 0.0
        return self._took(low, high) / (high - low)

    def _reread_took_all_at_once(
        self, now: float, refused: int, accepted: float, before: float
    ) -> bool:
        """Not told, slow start's end re-read at ``now`` after a 429 that came back at once:
        whether the server took every send after the refused one (``refused``: that one
        only), at the cut's pace (``accepted``), the pace it took in full just before the
        first refusal (``before``) more than twice that. A cap on requests in flight (it
        refused the request above it, and the cut's window holds what it held) and a
        sliding window the ramp filled (taking as the ramp's sends of a second before
        leave it) both do, and only later sends tell them apart: the pace goes back to
        ``BACKOFF`` of ``before``, and the window stays at the cut's until the hold-off
        ends. A cap refuses none of that (the window keeps what it held), so from then on a
        refusal at once with the window grown above the cut's is the window's (see
        ``_cap_read_refused``); a window refuses the pace, and its first refusal ends the
        reading: a cut as for any refusal after a hold-off, but to no less than ``BACKOFF``
        of what the server took over the second before (``_count_before``: the window's
        count, where what it took since the first cut is nearer half of it), and a recovery
        aiming no higher than ``_FOUND_ROSE`` times that count. (Not told, 429s at once, 40
        seeds 0-39 and 40-79: 20 in flight at 0.2 s 1.556x and 1.552x the ideal, now
        1.245x and 1.244x; sliding windows at 70/s 1.204x and 1.209x, now 1.162x and
        1.159x; at 100/s 1.337x and 1.329x, now 1.269x and 1.260x, 1-3 429s of 500 more;
        at 30/s, 5 and 40 in flight, and every row of the zoo, told or not, at once or not,
        byte-identical, and on a clock starting anywhere in a bucket (``--phase``) the zoo's
        rows at once within 0.002x. Cut from what it took since the first cut, 70/s 1.186x
        and 100/s 1.290x; recovering to the pace refused, 1.158x and 1.272x, and 1.26x where
        1.16x on the limit that drops at 4 s, one seed in 40 with ``--phase``.)"""
        state = self.state
        instant = state.reread_until > state.cut_at
        if self.configured is not None or not instant or refused > 1 or before <= 2 * accepted:
            return False
        rate = self._backoff * before
        if rate <= self.rate(now):
            return False
        state.rate = state.cut_rate = rate
        state.refused_pace = max(state.refused_pace, _PEAK_MARGIN * before)
        state.aim = max(state.aim, _PEAK_MARGIN * before)
        state.cap_read_at = max(now, state.hold_until)
        state.window_grows_at = max(state.window_grows_at, state.cap_read_at)
        return True

    def _cap_read_refused(self, sent_at: float, now: float) -> bool:
        """Not told, with the server read as a cap on requests in flight or being read so
        (``cap_read_at``, see ``_reread_took_all_at_once``): whether a 429 at ``now`` to a
        request sent at ``sent_at`` is the window's: after the reading, at once, with the
        window grown above the cut's and at least that many in flight. Any other ends the
        reading (a cap refuses none while the window holds what it held): it is no cap's,
        and is judged as a refusal after a hold-off."""
        state = self.state
        if state.cap_read_at == math.inf:
            return False
        held = state.in_flight - self._booked_ahead(now)  # (the refused one released)
        if (
            sent_at >= state.cap_read_at
            and self._came_back_at_once(sent_at, now)
            and state.window > state.window_cut
            and held >= state.window_cut
        ):
            return True
        state.cap_read_at = math.inf
        state.window_grows_at = min(state.window_grows_at, now)
        state.hold_until = min(state.hold_until, sent_at)  # (a fresh event)
        return False

    def _count_before(self, sent_at: float) -> float:
        """What the server took over the second before the bucket of ``sent_at``, per second
        (whole buckets, since the first send), whatever cut came meanwhile."""
        state = self.state
        low = _bucket_start(max(sent_at - _LEAD_SPAN, state.first_sent))
        high = _bucket_start(sent_at)
        if high - low < _MIN_SPAN:
            return 0.0
        return max(0, self._took(low, high)) / (high - low)

    def _reread_spent_burst(self, now: float, accepted: float) -> None:
        """Not told, slow start's end re-read (the sends from the first refused one to the
        cut all answered, at ``now``): the server refused most of them but not all, and
        ``accepted`` (what it took of them, by send time) is well under what it took of
        the sends one second before those (under ``_BURST_SPENT`` of it). A sliding window
        takes, once full, as many as it took a window before, which a ramp sent at a lower
        pace, and a fixed window refuses all until its boundary; a token bucket whose burst
        let the ramp through takes its rate, whatever it took before. The cut (from what it
        took over the ramp, the burst included: about twice a deep bucket's rate) is
        refused in half: the pace comes down to what it takes now, a cut that was not
        enough found a round trip sooner than by judging the sends after it, and is
        probed above from there (see the module docstring)."""
        state = self.state
        if accepted >= _BURST_SPENT * self._took_a_second_before() or accepted >= self.rate(now):
            return
        state.rate = state.cut_rate = max(self._min_rate, accepted)
        state.refused_pace = state.aim = state.aim_cap = state.rate
        state.ramp_took = min(state.ramp_took, accepted)  # the burst was no limit
        state.ramp_seen = min(state.ramp_seen, accepted)
        state.cut_at = now
        state.hold_until = now + max(HOLD, 2 * state.rtt)
        state.corrected = True  # judged later (see _cut_was_wrong)
        state.marginal_cut = False

    def _reread_full_window(self, now: float, accepted: float) -> None:
        """Not told, slow start's end re-read (at ``now``): the server refused most of the
        sends from the first refused one to the cut but not all, and ``accepted`` (what it
        took of them, by send time) is about what it took of the sends one second before
        (``_WINDOW_KEPT_LOW`` to ``_WINDOW_KEPT_HIGH`` of it): a sliding window the ramp
        filled, taking as its sends of a second before leave it. Its count is what it took
        over the second before the first refusal; the cut, from what it took over the
        whole ramp (up to two seconds, its slow first part included: about 0.84 of the
        count), comes up to ``LEARNED_HEADROOM`` of that count, found (held as if told: from
        ``BACKOFF`` of it, the recovery's cubic beyond it was refused about 5 s in at 100/s,
        and the retries of its 429s, a whole second's ``Retry-After``, were the batch's last
        answers: 40 seeds 0-39 and 40-79, 1.384x and 1.372x the ideal, now 1.263x and
        1.255x; that limit dropping to 40/s at 3 s, 1.579x and 1.575x, now 1.548x and
        1.545x; at 50/s 1.094x, now 1.076x; the drop/return family 1.1594x and 1.1585x, now
        1.1568x and 1.1587x; at 30/s, at once, and told, byte-identical or within 0.001x).
        (Cut from the ramp, the pace sat near 40/s for a second at a 50/s window, and a
        limit that dropped then was climbed back to that 41-43/s, not to 50.) That second
        ends with the first refused send's bucket: its sends before that one filled the
        window, and are the ramp's fastest. (Ended before that bucket, a 100/s window's
        count read about 92/s, now about 96/s: 40 seeds 0-39 and 40-79, 1.412x and 1.409x
        the ideal, now 1.384x and 1.372x; that limit dropping to 40/s at 3 s, 1.569x and
        1.568x, now 1.579x and 1.575x; at 50/s and 30/s every row of the zoo within 0.001x,
        the drop/return family 1.1607x and 1.1599x, now 1.1594x and 1.1585x.)"""
        state = self.state
        before = self._took_a_second_before()
        if not _WINDOW_KEPT_LOW * before <= accepted <= _WINDOW_KEPT_HIGH * before:
            return
        count = self._window_count()
        if count > 0 and self._backoff * count > self.rate(now):
            # Found: held as if told, one lesson of headroom under it (as a server that
            # refuses only over its rate is, but sends may still catch up: a window allows
            # bursts within its count).
            state.found = count
            state.headroom = LEARNED_HEADROOM
            state.rate = state.cut_rate = LEARNED_HEADROOM * count
            state.refused_pace = max(state.refused_pace, _PEAK_MARGIN * count)
            state.aim = max(state.aim, _PEAK_MARGIN * count)
            state.aim_cap = max(state.aim_cap, state.rate)

    def _slow_start_cap(self, sent_at: float) -> float:
        """How far slow start may take the pace on an answer to a request sent at
        ``sent_at``: :data:`SLOW_START_LEAD` times what the server accepted over the second
        before its bucket, if the pace is what held the senders back over it (at least
        ``_SATURATED`` of it was sent); ``inf`` if not, or with too little history.

        A client that a server keeps up with sends about half its pace (slow start keeps it
        about twice the demand), so a clump of answers goes at once on the bank; held to the
        lead, the pace would settle at 1.85 times the demand, and clumps would wait on a
        timer for as long as the client runs. (:meth:`on_success` does not ask at all when
        the shortest round trip seen is so short that slow start doubles at its fastest.)

        Asked once per bucket: the counts of whole buckets before it do not change in slow
        start (sends land in the bucket being filled, and a 429 ends slow start).
        """
        state = self.state
        cached, bucket, cap = self._lead
        if cached is state and bucket == math.floor(sent_at / BUCKET):
            return cap
        cap = math.inf
        proven = self._accepted_rate(sent_at, _LEAD_SPAN)
        start = max(sent_at - _LEAD_SPAN, state.first_sent)
        if proven is not None and self._pace_used(start, sent_at) >= _SATURATED:
            cap = SLOW_START_LEAD * proven
        self._lead = (state, math.floor(sent_at / BUCKET), cap)
        return cap

    def _recovery_curve(self, elapsed: float) -> float:
        """The rate ``elapsed`` seconds after the hold-off: back to the refused pace along a
        concave curve (quickly at first, flat near it), then beyond it ever faster (a cubic,
        as TCP CUBIC's window)."""
        state = self.state
        # (Never above the refused pace's level: nor when a state written before the aim
        # was kept, in a shared store, has none.)
        slow = self._cubic(elapsed, _CUBIC, min(state.aim, state.refused_pace))
        if not state.quick_probes:
            return slow
        # The server took more before this event: the limit dropped for a while, and it is
        # probed back up to that within QUICK_PROBE seconds of the refused pace (no further:
        # beyond it, the slow curve finds a limit that rose).
        target = min(state.took, self._ceiling() * state.headroom)
        climb = QUICK_PROBE if self.configured is None else _DROPPED_CLIMB
        cubic = (target / state.refused_pace - 1.0) / climb**3
        if cubic <= _CUBIC:
            return slow
        peak = state.refused_pace
        quick = self._cubic(elapsed, cubic, peak)
        if quick < target or not state.took_short:
            return max(slow, min(target, quick))
        # What the server took was taken at a pace short of the recovery's level then (it
        # may take more), and the target is reached with nothing refused: probe on from it
        # at once along the slow cubic, rather than hold it until the slow curve (from the
        # lower pace refused since) passes it. (Not when the pace had reached that level:
        # then the target is the limit, and probing on sooner only costs 429s.)
        reached = self._back_in(cubic, peak) + climb
        return max(slow, target * (1.0 + _CUBIC * (elapsed - reached) ** 3))

    def _cubic(self, elapsed: float, cubic: float, peak: float) -> float:
        """The recovery cubic of coefficient ``cubic``, ``elapsed`` seconds after the hold-off,
        from the cut rate back to ``peak`` (flat there) and beyond."""
        back_in = self._back_in(cubic, peak)
        return peak * (1.0 + cubic * (max(0.0, elapsed) - back_in) ** 3)

    def _back_in(self, cubic: float, peak: float) -> float:
        """Seconds after the hold-off the recovery cubic of coefficient ``cubic`` is back at
        ``peak`` from the cut rate."""
        back_in: float = (max(0.0, peak - self.state.cut_rate) / (cubic * peak)) ** (1 / 3)
        return back_in

    # -- the send history ---------------------------------------------------------------

    def _count(self, ring: list[int], at: float) -> int | None:
        """Count one at ``at`` in ``ring``; its bucket's offset (``None``: too old)."""
        index = math.floor(at / BUCKET)
        self._advance(index)
        offset = index - self.state.first_bucket
        if offset < 0:
            return None
        ring[offset] += 1
        return offset

    def _advance(self, index: int) -> None:
        """Move the rings so bucket ``index`` is in them (dropping the oldest)."""
        state = self.state
        shift = index - (state.first_bucket + BUCKETS - 1)
        if shift <= 0:
            return
        if shift >= BUCKETS:
            state.sent[:] = _ring()
            state.refused[:] = _ring()
            state.crowded[:] = _ring()
            state.paces[:] = [state.rate or 0.0] * BUCKETS
        else:
            state.sent[:] = state.sent[shift:] + [0] * shift
            state.refused[:] = state.refused[shift:] + [0] * shift
            state.crowded[:] = state.crowded[shift:] + [0] * shift
            # The pace was in force over buckets without sends too.
            state.paces[:] = state.paces[shift:] + [state.rate or 0.0] * shift
        state.first_bucket += shift

    def _buckets(self, start: float, end: float) -> tuple[int, int]:
        """The ring offsets ``low, high`` of the whole buckets sent in ``[start, end)``."""
        first = self.state.first_bucket
        low = max(0, math.floor(start / BUCKET) - first)
        return low, min(BUCKETS, math.floor(end / BUCKET) - first)

    def _sum(self, ring: list[int], start: float, end: float) -> int:
        """Counts of whole buckets sent in ``[start, end)``."""
        low, high = self._buckets(start, end)
        return sum(ring[low:high]) if high > low else 0

    def _took_a_second_before(self) -> float:
        """Slow start's end re-read: what the server took, per second, of the sends one
        second (``_LEAD_SPAN``) before those from the first refused one to the cut, over the
        buckets that span covers."""
        state = self.state
        start, end = state.cut_sent - _LEAD_SPAN, state.cut_at - _LEAD_SPAN
        low, high = _bucket_start(start), math.ceil(end / BUCKET) * BUCKET
        return self._took(low, high) / (high - low)

    def _took(self, start: float, end: float) -> int:
        """What the server took of the sends in the whole buckets of ``[start, end)``: those
        sent less those refused, by send time."""
        state = self.state
        return self._sum(state.sent, start, end) - self._sum(state.refused, start, end)

    def _pace_used(self, start: float, end: float) -> float:
        """The share of the pace sent in the whole buckets of ``[start, end)``: the sends
        over the pace's integral, the pace taken as linear across each bucket from the one
        in force at the previous bucket's last send (a ramp's pace at a bucket's last send
        can be several times its average over the bucket)."""
        state = self.state
        low, high = self._buckets(start, end)
        if high <= low:
            return 0.0
        ends = state.paces[max(0, low - 1) : high]
        if low == 0:
            ends.insert(0, ends[0])  # the bucket before is forgotten: no change across it
        paced = sum(map(operator.add, ends, ends[1:])) * BUCKET / 2
        return sum(state.sent[low:high]) / paced if paced > 0 else 0.0

    def _accepted_rate(self, before: float, span: float) -> float | None:
        """Requests per second the server did not refuse, by send time, over the window
        before ``before`` (or since the first send, if that is shorter); ``None`` with too
        little history."""
        state = self.state
        # Only sends since the last cut: the pace before it is not the one being judged.
        start = max(before - span, state.first_sent, state.cut_at)
        if start >= before:
            return None  # nothing sent since (a 429 for a request this state never saw)
        # Whole buckets only: the one holding ``before`` is still being filled.
        start = _bucket_start(start)
        end = _bucket_start(before)
        span = end - start
        if span < _MIN_SPAN:
            return None
        accepted = self._took(start, end)
        return max(0, accepted) / span

    def _correction_peak(self, sent_at: float, pace: float, peak: float) -> float:
        """Where the recovery from a cut that was not enough aims (``peak``: from what the
        server accepted since that cut): if over the ``MEASURE_SPAN`` before this refusal,
        whatever cut came meanwhile, the server took well under the pace (under
        ``_TOOK_SHORT`` of it: a window let its count through while the pace was above it),
        no lower than what it took. (From the halved rate along the cubic beyond it,
        four processes told 60/s were back at it within three seconds, and filled a 40/s
        window again.)"""
        state = self.state
        start = _bucket_start(max(sent_at - MEASURE_SPAN, state.first_sent))
        end = _bucket_start(sent_at)
        if end - start < _MIN_SPAN:
            return peak
        took = self._took(start, end)
        took_rate = max(0, took) / (end - start)
        return max(peak, took_rate) if took_rate < _TOOK_SHORT * pace else peak

    def _demand(self, at: float) -> float:
        """Requests per second sent over the ``_USE_SPAN`` before ``at`` (its own bucket,
        still filling, included: an underestimate, never an over one)."""
        state = self.state
        high = math.floor(at / BUCKET) - state.first_bucket + 1
        low = high - round(_USE_SPAN / BUCKET)
        if low < 0 or high > BUCKETS:
            return 0.0
        return sum(state.sent[low:high]) / _USE_SPAN

    def _cut_was_wrong(self, sent_at: float) -> bool:
        """Whether the last cut was not enough: most of what was sent since is refused
        too (the limit dropped, or a burst the server allowed inflated what it accepted), so
        the hold-off ends. A cut from a marginal refusal is judged at once; any other only
        after ``_WRONG_CUT_SPAN`` (a window draining refuses for a while after any cut)."""
        state = self.state
        start = state.cut_at + self._instant_cut_lag()
        elapsed = sent_at - start
        span = _CORRECTED_SPAN if state.corrected else _WRONG_CUT_SPAN
        if elapsed < 0 or (not state.marginal_cut and elapsed < span):
            return False
        if state.marginal_cut and state.no_burst:
            # A server that allows no burst refuses a jittered send of the pace before the
            # cut (booked ahead, before it) as well: judged on the sends booked after it.
            # (Told 60/s, four processes sharing a 40/s leaky bucket, 80 seeds, the live
            # machine with 1 % of its stalls: 1.144x the ideal -> 1.136x, the worst seed
            # 1.37x -> 1.25x; told 40/s unmoved. For every cut judged at once, a token
            # bucket told 60/s went from 0.944x to 0.966x, a fixed window 1.060x -> 1.078x.)
            if sent_at <= state.cut_booked:
                return False  # booked before the cut, at the pace before it
            start = max(start, state.cut_booked)
        sent, refused = self._since_cut(sent_at, start)
        first = _bucket_start(start)
        if self.configured is not None and state.cut_sent >= first:
            # Told the limit, the cut's own refused request in the first bucket counted (a
            # server that answers in milliseconds) is not one sent since. Counted, with five
            # sends judged at once after a lesson in headroom, one more 429 was "most"
            # refused, and the pace was cut to half (four processes sharing a leaky bucket
            # told its 40/s: 25 times in 40 runs of 400 requests). (Not told, the sooner
            # correction helps where a window's limit was found: four processes sharing a
            # sliding window, 1.240x the ideal, 1.260x with the cut's own 429 left out.)
            sent -= 1
            refused -= 1
        return sent >= _WRONG_CUT_SENDS and refused > _WRONG_CUT_SHARE * sent

    def _instant_cut_lag(self) -> float:
        """Not told, how much later than ``_WRONG_CUT_SPAN`` (or ``_CORRECTED_SPAN``) after
        it the last cut is judged: a round trip if its 429 came back at once (in under
        ``_INSTANT_SHARE`` of the shortest round trip), none otherwise. A 429 after the
        latency cuts a round trip after its request left, and the spans were measured so;
        one at once cuts as the server starts refusing, and a fixed window the pace filled
        refuses everything until its boundary: judged 0.2 s after the cut, that was "not
        enough", and the pace was halved (a fixed window answering at once, 20 seeds:
        1.48x the ideal)."""
        state = self.state
        if self.configured is not None or not self._came_back_at_once(state.cut_sent, state.cut_at):
            return 0.0
        return state.rtt

    def _count_quick_probes(self, sent_at: float, now: float, pace: float) -> None:
        """A refusal after the last event's hold-off (and after slow start, unless told the
        limit): if the server took the pace over the second before it (at least
        ``_SATURATED`` of it, with no cut in that second), what it took is where a limit
        that dropped now is probed back up to, quickly (:data:`QUICK_PROBES` times at most);
        if not, and the pace was probing beyond the last refused one, one probe is used up."""
        state = self.state
        took = None
        if sent_at - max(state.first_sent, state.cut_at) >= _MARGINAL_SPAN:
            took = self._accepted_rate(sent_at, _MARGINAL_SPAN)
        longer = self._accepted_rate(sent_at, MEASURE_SPAN)
        ramp_took, state.ramp_took = state.ramp_took, 0.0  # read at this refusal only
        if self.configured is not None and took and longer and took >= _SATURATED * pace:
            # Told the limit (perhaps too much): what it took over the last two seconds, not
            # one, is probed back up to (a fixed window lets up to twice its count through
            # in a second, and the probes went back above its limit every time).
            took = max(_SATURATED * pace, min(took, longer))
        # (A lower one, while probes up to a higher one last, is the dropped limit: it
        # neither lowers the target nor gives those probes back.)
        if (
            took is not None
            and took >= _SATURATED * pace
            and (took >= state.took or not state.quick_probes)
        ):
            state.took = took
            # (Not told, a pace that rose over that second, all of it taken, on its way back
            # to the refused one, is short too: on the limit that drops to 20/s and comes
            # back, 1 seed in 4 read slow start's end right and took 41/s refused at 45/s,
            # then held 41/s for 1.5 s after the limit was back; a drop at 3.5 s, 40 seeds:
            # 1.218x -> 1.162x at 15/s, 1.217x -> 1.190x at 20/s. Not when the pace was
            # probing beyond the refused one: what the server took is then about the limit,
            # and a drop at 5 s cost 0.02x more. Nor told: four processes told 1.5 times a
            # fixed window's limit probed on into it, 1.27x where 1.22x.)
            state.took_short = pace < _PEAK_MARGIN * state.refused_pace or (
                self.configured is None
                and took < _PEAK_MARGIN * pace
                and pace <= state.refused_pace
            )
            state.quick_probes = QUICK_PROBES
            state.probe_spent_at = now
            if took < ramp_took and pace <= state.refused_pace:
                # The first refusal since slow start, on the pace's way back, and the server
                # took less than slow start's ramp got through: the limit dropped before the
                # pace had a second at the old level (in the first cut's hold-off), and that
                # ramp is all there is to go back to. Probed back up to quickly, and on from
                # it (short of the limit: an average over the ramp). A drop at 2 s to 20/s,
                # back at 10 s, 40 seeds: back within 10 % of 50/s in 4.89 s (max 5.65),
                # now 3.08 s (max 4.40); 1.321x -> 1.206x. Not while probing beyond the
                # refused pace: a token bucket of burst twice its rate let the ramp through
                # at 99/s of 50, and probes back up to that cost 1.5 more 429s of 500 (6.7
                # more probed from slow start's cut on).
                state.took = ramp_took
                state.took_short = True
        elif (
            state.quick_probes
            and state.cut
            and self.rate(now) > _QUICK_PROBE_SPENT * state.refused_pace
            and (self.configured is None or now - state.probe_spent_at >= _QUICK_PROBE_EVERY)
        ):
            state.quick_probes -= 1  # refused well beyond the last refused pace: not back yet
            state.probe_spent_at = now

    def _since_cut(self, sent_at: float, start: float | None = None) -> tuple[int, int]:
        """Requests sent, and refused, from the last cut (or ``start``) to the bucket of
        ``sent_at``."""
        state = self.state
        start = state.cut_at if start is None else start
        end = sent_at + BUCKET
        return self._sum(state.sent, start, end), self._sum(state.refused, start, end)

    def _came_back_at_once(self, sent_at: float, now: float) -> bool:
        """Whether a 429 at ``now`` to a request sent at ``sent_at`` came back at once: in
        under ``_INSTANT_SHARE`` of the shortest round trip of an accepted request, before
        any answer to the sends around it."""
        return now - sent_at < _INSTANT_SHARE * self.state.rtt_floor

    def _marginal(self, sent_at: float) -> bool:
        """Whether the server accepted nearly everything sent since the last cut (within
        the measuring span) and refuses only now: then the refused pace is the limit."""
        state = self.state
        start = max(state.cut_at, sent_at - MEASURE_SPAN, self._judged_since())
        end = sent_at + BUCKET
        sent = self._sum(state.sent, start, end)
        if not sent or self._sum(state.refused, start, end) > _MARGINAL_SHARE * sent:
            return False
        # ... and the pace was used: sends held back by it, not a client that sent little.
        low, high = self._buckets(start, end)
        paced = sum(state.paces[low:high]) * BUCKET
        return sent >= _SATURATED * paced

    def _booked_ahead(self, now: float) -> int:
        """Slots booked ahead (:meth:`reserve`) and not yet due at ``now``: counted in
        flight, but not yet at the server."""
        state = self.state
        if state.last_slot <= now or state.rate is None:
            return 0
        return min(state.in_flight, math.floor((state.last_slot - now) * state.rate) + 1)

    def _recent_pace(self, at: float) -> float:
        """The pace a request sent at ``at`` left at (the pace now, if that is forgotten)."""
        state = self.state
        offset = math.floor(at / BUCKET) - state.first_bucket
        if 0 <= offset < BUCKETS and state.paces[offset] > 0:
            return state.paces[offset]
        return self.rate(at)
