//! The per-key search for a linearization (Wing & Gong, with Lowe's memoization): walk
//! the time-ordered events; at each step linearize some operation called before the
//! earliest pending return, if the model accepts its output and the state reached is
//! new; when a return is reached instead, backtrack.
//!
//! Operations with unknown outcomes are optional: they have no return event, are tried
//! only after every known one at a step, may be linearized at any later step, and never
//! have to be. Their freedom multiplies the states, so three rules prune them, each
//! keeping only a state that can do everything the pruned one could: of identical
//! optional operations only the earliest untaken one is tried; an optional operation
//! that changes nothing, or makes an earlier one of the same run pointless, is skipped
//! ([`Search::redundant`]); and [`visited`] drops states that took a superset of the
//! optional operations of one already seen. The tests in `tests/oracle.rs` compare the
//! result against a brute-force search.

mod bitset;
mod events;
mod visited;

use crate::model::{apply, step, Call, Reply, ValueId, ABSENT};
use bitset::Bitset;
use events::{ranked_events, EventKind, EventList, Node, OptionalCall, HEAD};
use visited::Visited;

/// How many operations of each kind a [`DeadEnd`] keeps: enough to show the context of a
/// violation, few enough that an explanation stays readable.
pub(crate) const MAX_EXPLAINED_OPS: usize = 8;

/// One operation of one key, its values interned, as the search sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyOp {
    /// What was asked.
    pub(crate) call: Call,
    /// What was answered; `Reply::Unknown` if nobody knows.
    pub(crate) reply: Reply,
    /// When it was called.
    pub(crate) call_ns: u64,
    /// When it returned; `None` (never) for unknown outcomes.
    pub(crate) return_ns: Option<u64>,
}

/// How the search ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Every operation with a known outcome was linearized.
    Linearizable,
    /// No linearization exists; here is where the search got furthest.
    Violation(DeadEnd),
    /// The search recorded more states than allowed without deciding.
    OverBudget {
        /// States recorded.
        states: u64,
        /// The furthest point the search had got stuck at, if any.
        deepest: Option<DeadEnd>,
    },
}

/// The point where the search had linearized the most known operations and got stuck.
/// Operations are named by their index in the slice given to [`search`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadEnd {
    /// How many operations with known outcomes were linearized.
    pub(crate) linearized_known: usize,
    /// How many operations with known outcomes there are in all.
    pub(crate) total_known: usize,
    /// The last (at most [`MAX_EXPLAINED_OPS`]) operations linearized, oldest first.
    pub(crate) recent: Vec<usize>,
    /// The operation whose return came while no operation could go next.
    pub(crate) blocked: usize,
    /// Known operations called but not linearized by then (at most [`MAX_EXPLAINED_OPS`]).
    pub(crate) pending: Vec<usize>,
    /// The model's state there.
    pub(crate) state: ValueId,
}

/// Searches for a linearization of `ops` (all of one key), recording at most
/// `max_states` states.
pub(crate) fn search(ops: &[KeyOp], max_states: u64) -> Outcome {
    Search::new(ops, max_states).run()
}

/// An operation chosen to go next at some step.
#[derive(Debug, Clone, Copy)]
enum Choice {
    /// A known operation, by its call's node in the event list.
    Known(Node),
    /// An optional one, by index into `Search::optional`; `deadline` is the rank of the
    /// step's first return, which its call had to precede.
    Optional { index: usize, deadline: usize },
}

/// Where to look for the next candidate at the current step.
#[derive(Debug, Clone, Copy)]
enum Cursor {
    /// Among the known operations, from this node of the event list.
    Known(Node),
    /// Among the optional ones, from this index, while their calls precede `deadline`.
    Optional { from: usize, deadline: usize },
}

/// A choice made, with what to restore when undoing it.
#[derive(Debug, Clone, Copy)]
struct Frame {
    choice: Choice,
    state_before: ValueId,
}

/// The search's whole state.
struct Search<'a> {
    /// The key's operations.
    ops: &'a [KeyOp],
    /// The operation behind each known slot, in call order.
    known_op: Vec<usize>,
    /// Call and return events of the known operations not yet linearized.
    events: EventList,
    /// Optional operations (other than reads), in call order.
    optional: Vec<OptionalCall>,
    /// Known slots linearized so far.
    known_done: Bitset,
    /// Indices into `optional` linearized so far.
    optional_done: Bitset,
    /// The model's state after the linearized operations.
    state: ValueId,
    /// The choices made so far, in order.
    stack: Vec<Frame>,
    /// Every state reached so far: reaching one again (or a dominated one) cannot help.
    visited: Visited,
    /// The most states `visited` may record.
    max_states: u64,
    /// How many known operations are linearized; the search succeeds when all are.
    linearized_known: usize,
    /// The furthest point the search got stuck at, for the explanation.
    deepest: Option<DeadEnd>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [KeyOp], max_states: u64) -> Self {
        let mut known_op: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].return_ns.is_some())
            .collect();
        known_op.sort_by_key(|&i| (ops[i].call_ns, i));
        // An optional read changes nothing and constrains nothing: leave it out.
        let mut optional_op: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].return_ns.is_none() && ops[i].call != Call::Get)
            .collect();
        optional_op.sort_by_key(|&i| (ops[i].call_ns, i));
        let (events, optional) = ranked_events(ops, &known_op, &optional_op);
        Self {
            ops,
            events: EventList::new(events, known_op.len()),
            known_done: Bitset::new(known_op.len()),
            optional_done: Bitset::new(optional.len()),
            known_op,
            optional,
            state: ABSENT,
            stack: Vec::new(),
            visited: Visited::default(),
            max_states,
            linearized_known: 0,
            deepest: None,
        }
    }

    fn run(mut self) -> Outcome {
        let mut cursor = Cursor::Known(self.events.first());
        while self.linearized_known < self.known_op.len() {
            cursor = match self.next_candidate(cursor) {
                Some(choice) => match self.try_take(choice) {
                    Err(states) => {
                        let deepest = self.deepest;
                        return Outcome::OverBudget { states, deepest };
                    }
                    Ok(true) => Cursor::Known(self.events.first()),
                    Ok(false) => self.after(choice),
                },
                None => {
                    self.note_dead_end();
                    match self.backtrack() {
                        Some(cursor) => cursor,
                        None => return Outcome::Violation(self.deepest.expect("noted above")),
                    }
                }
            };
        }
        Outcome::Linearizable
    }

    /// The next operation that may go at this step, from `cursor` on: known operations
    /// called before the first pending return, then optional ones called before it.
    fn next_candidate(&self, cursor: Cursor) -> Option<Choice> {
        let (from, deadline) = match cursor {
            Cursor::Known(node) => {
                assert_ne!(node, HEAD, "a call is always followed by its return");
                let event = self.events.event(node);
                match event.kind {
                    EventKind::Call => return Some(Choice::Known(node)),
                    EventKind::Return => (0, event.rank),
                }
            }
            Cursor::Optional { from, deadline } => (from, deadline),
        };
        // Of identical optional operations, only the earliest called one not yet taken
        // is tried: any linearization using later twins works with earlier ones too.
        let untaken = |i: usize| !self.optional_done.contains(i);
        let index = (from..self.optional.len())
            .take_while(|&i| self.optional[i].rank < deadline)
            .find(|&i| untaken(i) && self.optional[i].twin_before.is_none_or(|t| !untaken(t)))?;
        Some(Choice::Optional { index, deadline })
    }

    /// Linearizes `choice` if the model accepts it and the state reached is new.
    /// `Err` carries the number of states recorded when the budget runs out.
    fn try_take(&mut self, choice: Choice) -> Result<bool, u64> {
        let op = self.ops[self.op_of(choice)];
        let Some(next) = step(self.state, op.call, op.reply) else {
            return Ok(false);
        };
        if self.redundant(op, next) {
            return Ok(false);
        }
        self.mark(choice, true);
        if !self
            .visited
            .insert(self.known_done.key(), next, &self.optional_done)
        {
            self.mark(choice, false);
            return Ok(false);
        }
        if self.visited.states() > self.max_states {
            return Err(self.visited.states());
        }
        self.stack.push(Frame {
            choice,
            state_before: self.state,
        });
        self.state = next;
        if let Choice::Known(node) = choice {
            self.events.lift(node);
            self.linearized_known += 1;
        }
        Ok(true)
    }

    /// Whether taking `op` now, reaching `next`, is pointless because a state with the
    /// same known operations and value but fewer optional ones taken is reached anyway.
    /// That is so if `op` is optional and changes nothing, or if leaving out any single
    /// operation of the run of optional ones taken since the last known one still gets
    /// `op` accepted with the same result: the search reaches that from the run's start.
    /// Without this rule optional operations are tried in every order, subset and place,
    /// mostly before the smaller sets whose states would prune them.
    fn redundant(&self, op: KeyOp, next: ValueId) -> bool {
        if op.reply == Reply::Unknown && next == self.state {
            return true;
        }
        let last_known = self
            .stack
            .iter()
            .rposition(|f| matches!(f.choice, Choice::Known(_)));
        let run = &self.stack[last_known.map_or(0, |known| known + 1)..];
        let Some(first) = run.first() else {
            return false;
        };
        (0..run.len()).any(|left_out| {
            let kept = run.iter().enumerate().filter(|&(i, _)| i != left_out);
            let calls = kept.map(|(_, frame)| self.ops[self.op_of(frame.choice)].call);
            let value = calls.fold(first.state_before, |value, call| apply(value, call).0);
            step(value, op.call, op.reply) == Some(next)
        })
    }

    /// Undoes the last choice; the cursor to resume from, or `None` if none was made.
    fn backtrack(&mut self) -> Option<Cursor> {
        let frame = self.stack.pop()?;
        self.state = frame.state_before;
        self.mark(frame.choice, false);
        if let Choice::Known(node) = frame.choice {
            self.events.unlift(node);
            self.linearized_known -= 1;
        }
        Some(self.after(frame.choice))
    }

    /// Adds `choice` to (or removes it from) the linearized sets.
    fn mark(&mut self, choice: Choice, taken: bool) {
        let (set, slot) = match choice {
            Choice::Known(node) => (&mut self.known_done, self.events.event(node).slot),
            Choice::Optional { index, .. } => (&mut self.optional_done, index),
        };
        if taken {
            set.insert(slot);
        } else {
            set.remove(slot);
        }
    }

    /// The cursor for the candidate after `choice` at the same step.
    fn after(&self, choice: Choice) -> Cursor {
        match choice {
            Choice::Known(node) => Cursor::Known(self.events.next(node)),
            Choice::Optional { index, deadline } => Cursor::Optional {
                from: index + 1,
                deadline,
            },
        }
    }

    /// The index in the key's operations of the operation behind `choice`.
    fn op_of(&self, choice: Choice) -> usize {
        match choice {
            Choice::Known(node) => self.known_op[self.events.event(node).slot],
            Choice::Optional { index, .. } => self.optional[index].op,
        }
    }

    /// Records the current step as the deepest dead end if it is deeper than the last.
    fn note_dead_end(&mut self) {
        let linearized_known = self.linearized_known;
        if self
            .deepest
            .as_ref()
            .is_some_and(|d| d.linearized_known >= linearized_known)
        {
            return;
        }
        let mut pending = Vec::new();
        let mut node = self.events.first();
        let blocked = loop {
            let event = self.events.event(node);
            let op = self.known_op[event.slot];
            if event.kind == EventKind::Return {
                break op;
            }
            if pending.len() < MAX_EXPLAINED_OPS {
                pending.push(op);
            }
            node = self.events.next(node);
        };
        let start = self.stack.len().saturating_sub(MAX_EXPLAINED_OPS);
        let recent = self.stack[start..]
            .iter()
            .map(|f| self.op_of(f.choice))
            .collect();
        let total_known = self.known_op.len();
        let state = self.state;
        self.deepest = Some(DeadEnd {
            linearized_known,
            total_known,
            recent,
            blocked,
            pending,
            state,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: Call, reply: Reply, call_ns: u64, return_ns: Option<u64>) -> KeyOp {
        KeyOp {
            call,
            reply,
            call_ns,
            return_ns,
        }
    }

    #[test]
    fn a_read_of_a_concurrent_write_may_go_either_side_of_it() {
        let write = op(Call::Put(1), Reply::Done, 0, Some(10));
        for seen in [ABSENT, 1] {
            let read = op(Call::Get, Reply::Read(seen), 5, Some(15));
            assert!(matches!(search(&[write, read], 100), Outcome::Linearizable));
        }
    }

    #[test]
    fn dead_end_names_the_read_that_could_not_be_placed() {
        let ops = [
            op(Call::Put(1), Reply::Done, 0, Some(10)),
            op(Call::Get, Reply::Read(2), 20, Some(30)),
        ];
        let Outcome::Violation(dead_end) = search(&ops, 100) else {
            panic!("a read of a value never written must be rejected");
        };
        assert_eq!(dead_end.blocked, 1);
        assert_eq!((dead_end.linearized_known, dead_end.total_known), (1, 2));
        assert_eq!((dead_end.recent.clone(), dead_end.state), (vec![0], 1));
    }

    #[test]
    fn an_unknown_write_called_after_a_read_returned_cannot_explain_it() {
        let ops = [
            op(Call::Get, Reply::Read(1), 0, Some(10)),
            op(Call::Put(1), Reply::Unknown, 20, None),
        ];
        assert!(matches!(search(&ops, 100), Outcome::Violation(_)));
    }

    /// Ten optional writes of distinct values, all called first, then reads.
    fn many_optional_writes_then(reads: &[(ValueId, u64)]) -> Vec<KeyOp> {
        let writes = (1..=10).map(|value| op(Call::Put(value), Reply::Unknown, 0, None));
        let reads = reads
            .iter()
            .map(|&(seen, at_ns)| op(Call::Get, Reply::Read(seen), at_ns, Some(at_ns + 5)));
        writes.chain(reads).collect()
    }

    #[test]
    fn optional_writes_are_not_tried_in_every_order_and_subset() {
        // Fails at the last read, so every state before it is explored: ~10 per read
        // with the pruning rules, thousands of orders and subsets without them.
        let ops = many_optional_writes_then(&[(5, 10), (7, 20), (3, 30), (11, 40)]);
        assert!(matches!(search(&ops, 200), Outcome::Violation(_)));
    }

    #[test]
    fn identical_optional_writes_are_tried_as_one() {
        let mut ops = vec![op(Call::Put(1), Reply::Unknown, 0, None); 10];
        ops.extend([
            op(Call::Get, Reply::Read(1), 10, Some(15)),
            op(Call::Put(2), Reply::Done, 20, Some(25)),
            op(Call::Get, Reply::Read(1), 30, Some(35)),
            op(Call::Get, Reply::Read(3), 40, Some(45)),
        ]);
        // Which two of the ten twins explain the two reads does not matter: without
        // that rule the 45 pairs alone exceed this budget.
        assert!(matches!(search(&ops, 30), Outcome::Violation(_)));
    }

    #[test]
    fn a_zero_budget_stops_the_search_at_its_first_state() {
        let ops = [op(Call::Put(1), Reply::Done, 0, Some(10))];
        let outcome = search(&ops, 0);
        assert!(matches!(
            outcome,
            Outcome::OverBudget {
                states: 1,
                deepest: None
            }
        ));
    }
}
