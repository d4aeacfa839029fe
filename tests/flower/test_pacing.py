"""The reply pacer's schedule, pinned by hand (times in seconds)."""

from pytest import approx

from fedrec.flower.pacing import ReplyPacer


def test_backs_off_until_two_replies_give_a_pace():
    p = ReplyPacer()
    pauses = [p.pause(t) for t in (0.0, 0.001, 0.0025)]
    assert pauses == approx([0.001, 0.0015, 0.00225])
    p.seen(0.004, 0)  # an empty poll changes nothing
    assert p.pause(0.004) == approx(0.003375)
    p.seen(0.010, 1)  # one reply: no pace yet, the back-off restarts
    assert [p.pause(0.010), p.pause(0.011)] == approx([0.001, 0.0015])


def test_sleeps_until_just_before_the_next_reply_is_due():
    p = ReplyPacer()
    p.seen(0.010, 1)
    p.seen(0.030, 1)  # pace 0.020: the next reply is due at 0.050
    assert p.pause(0.030) == approx(0.010)  # 0.049 - 0.030, capped at 10 ms
    assert p.pause(0.040) == approx(0.009)  # until 1 ms before due
    # from 1 ms before due: 1 ms, then ×1.5 while nothing comes, at most 10 ms
    pauses = [p.pause(t) for t in (0.049, 0.050, 0.0515, 0.05375, 0.0571, 0.0622)]
    assert pauses == approx([0.001, 0.0015, 0.00225, 0.003375, 0.0050625, 0.00759375])
    assert p.pause(0.07) == approx(0.01)


def test_pace_is_per_reply_when_replies_come_in_bursts():
    p = ReplyPacer()
    p.seen(0.0, 3)
    p.seen(0.010, 1)  # 4 replies in 10 ms: pace 10/3 ms, due at 13.33 ms
    assert p.pause(0.010) == approx(0.010 / 3 - 0.001)
