"""A code context's cells take turns in the order they reached the agent (agent/turns.py)."""

from __future__ import annotations

import threading

from firebox.agent.turns import Turns


def test_holders_take_turns_in_the_order_of_their_tickets() -> None:
    turns, order = Turns(), []
    tickets = [turns.draw() for _ in range(6)]
    ready = threading.Barrier(6)

    def cell(k: int) -> None:
        ready.wait()  # every thread waits at once: only the tickets decide
        assert turns.wait(tickets[k], 30)
        order.append(k)
        turns.release()

    threads = [threading.Thread(target=cell, args=(k,)) for k in reversed(range(6))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert order == list(range(6))


def test_a_ticket_given_up_passes_its_turn_and_first_cuts_in() -> None:
    turns = Turns()
    running, queued, later = turns.draw(), turns.draw(), turns.draw()
    assert turns.wait(running, 1)
    assert not turns.wait(queued, 0.01)  # held: it keeps its place
    turns.give_up(queued)
    restart = turns.draw(first=True)  # next after the holder, ahead of `later`
    turns.release()
    assert not turns.wait(later, 0.01)
    assert turns.wait(restart, 1)
    turns.release()
    assert turns.wait(later, 1)
    turns.release()


def test_hold_is_a_turn_of_ones_own() -> None:
    turns = Turns()
    with turns.hold():
        assert not turns.wait(turns.draw(), 0.01)
