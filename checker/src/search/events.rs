//! The time-ordered call and return events of the operations with known outcomes, kept
//! in a doubly linked list so that linearizing an operation removes its two events in
//! O(1) and backtracking puts them back in O(1) ("dancing links"). Calls of operations
//! with unknown outcomes are ranked among the events but kept apart.

use std::collections::HashMap;

use super::KeyOp;
use crate::model::Call;

/// Whether an event is an operation's call or its return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum EventKind {
    /// Sorted before returns at the same time, so touching intervals count as concurrent.
    Call,
    /// The time by which the operation must have taken effect.
    Return,
}

/// One event of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Event {
    /// Call or return.
    pub(super) kind: EventKind,
    /// The operation's slot: its index among the known operations in call order, and
    /// its bit in the set of known operations linearized.
    pub(super) slot: usize,
    /// The event's rank in time among all events of the key, including the calls of
    /// operations with unknown outcomes, which are not in the list.
    pub(super) rank: usize,
}

/// An operation with an unknown outcome, which has only a call event and stays out of
/// the list.
#[derive(Debug, Clone, Copy)]
pub(super) struct OptionalCall {
    /// Its index in the key's operations.
    pub(super) op: usize,
    /// The rank of its call among all events.
    pub(super) rank: usize,
    /// The previous optional operation (by index) with the identical call, if any.
    pub(super) twin_before: Option<usize>,
}

/// Ranks the events of the known and optional operations (each list in call order) by
/// time, calls before returns at equal times, so touching intervals count as concurrent.
/// Returns the known operations' events, whose slots index `known_op`, and the optional
/// operations' calls, indexed like `optional_op`.
pub(super) fn ranked_events(
    ops: &[KeyOp],
    known_op: &[usize],
    optional_op: &[usize],
) -> (Vec<Event>, Vec<OptionalCall>) {
    // (time, kind, is optional, slot or optional index)
    let mut timed = Vec::with_capacity(2 * known_op.len() + optional_op.len());
    for (slot, &op) in known_op.iter().enumerate() {
        timed.push((ops[op].call_ns, EventKind::Call, false, slot));
        let return_ns = ops[op].return_ns.expect("known operations return");
        timed.push((return_ns, EventKind::Return, false, slot));
    }
    for (index, &op) in optional_op.iter().enumerate() {
        timed.push((ops[op].call_ns, EventKind::Call, true, index));
    }
    timed.sort_unstable();
    let mut last_twin: HashMap<Call, usize> = HashMap::new();
    let (mut events, mut optional) = (Vec::new(), Vec::new());
    for (rank, (_, kind, is_optional, slot)) in timed.into_iter().enumerate() {
        if !is_optional {
            events.push(Event { kind, slot, rank });
            continue;
        }
        assert_eq!(
            optional.len(),
            slot,
            "optional calls are ranked in index order"
        );
        let op = optional_op[slot];
        let twin_before = last_twin.insert(ops[op].call, slot);
        optional.push(OptionalCall {
            op,
            rank,
            twin_before,
        });
    }
    (events, optional)
}

/// A node of the list; [`HEAD`] is the sentinel that starts and ends it.
pub(super) type Node = usize;

/// The sentinel node: `next[HEAD]` is the first event; reaching it again means the end.
pub(super) const HEAD: Node = 0;

/// The circular doubly linked list of events.
#[derive(Debug)]
pub(super) struct EventList {
    /// The event at each node; index [`HEAD`] holds a placeholder never read.
    events: Vec<Event>,
    /// The node after each node.
    next: Vec<Node>,
    /// The node before each node.
    prev: Vec<Node>,
    /// For a call node, its return node.
    return_of: Vec<Node>,
}

impl EventList {
    /// Links `events` (sorted by rank, each call before its return) into a list.
    pub(super) fn new(events: Vec<Event>, slots: usize) -> Self {
        let len = events.len() + 1;
        let placeholder = Event {
            kind: EventKind::Call,
            slot: usize::MAX,
            rank: usize::MAX,
        };
        let mut all = Vec::with_capacity(len);
        all.push(placeholder);
        all.extend(events);
        let next = (0..len).map(|node| (node + 1) % len).collect();
        let prev = (0..len).map(|node| (node + len - 1) % len).collect();
        let mut call_node = vec![HEAD; slots];
        let mut return_of = vec![HEAD; len];
        for (node, event) in all.iter().enumerate().skip(1) {
            match event.kind {
                EventKind::Call => call_node[event.slot] = node,
                EventKind::Return => return_of[call_node[event.slot]] = node,
            }
        }
        Self {
            events: all,
            next,
            prev,
            return_of,
        }
    }

    /// The first node still linked, or [`HEAD`] if none is.
    pub(super) fn first(&self) -> Node {
        self.next[HEAD]
    }

    /// The node after `node`.
    pub(super) fn next(&self, node: Node) -> Node {
        self.next[node]
    }

    /// The event at `node` (not [`HEAD`]).
    pub(super) fn event(&self, node: Node) -> Event {
        debug_assert_ne!(node, HEAD);
        self.events[node]
    }

    /// Unlinks the call at `call` and its return.
    pub(super) fn lift(&mut self, call: Node) {
        self.unlink(call);
        self.unlink(self.return_of[call]);
    }

    /// Relinks what [`EventList::lift`] unlinked; lifts must be undone last-first.
    pub(super) fn unlift(&mut self, call: Node) {
        self.relink(self.return_of[call]);
        self.relink(call);
    }

    fn unlink(&mut self, node: Node) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, node: Node) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list_of_two_overlapping_ops() -> EventList {
        let event = |kind, slot, rank| Event { kind, slot, rank };
        let events = vec![
            event(EventKind::Call, 0, 0),
            event(EventKind::Call, 1, 1),
            event(EventKind::Return, 0, 2),
            event(EventKind::Return, 1, 3),
        ];
        EventList::new(events, 2)
    }

    fn ranks(list: &EventList) -> Vec<usize> {
        let mut ranks = Vec::new();
        let mut node = list.first();
        while node != HEAD {
            ranks.push(list.event(node).rank);
            node = list.next(node);
        }
        ranks
    }

    #[test]
    fn lift_removes_a_call_and_its_return_and_unlift_restores_them() {
        let mut list = list_of_two_overlapping_ops();
        let second_call = list.next(list.first());
        list.lift(second_call);
        assert_eq!(ranks(&list), vec![0, 2]);
        list.lift(list.first());
        assert_eq!(ranks(&list), Vec::<usize>::new());
        list.unlift(1);
        list.unlift(second_call);
        assert_eq!(ranks(&list), vec![0, 1, 2, 3]);
    }
}
