//! The prompt schedule: which prompt goes out next, in which epoch, under which lease, and
//! which answers are new.
//!
//! The learner owns the data order: each epoch is a seeded permutation of the prompt set,
//! and every position in it is an *item* with a stable id (`EPOCH:POSITION`). Items are
//! handed out in leases; an item not answered when its lease expires goes back to the
//! front of the queue for any worker, keeping its id, so whichever answer arrives first
//! is accepted and any later one is a duplicate. Time is passed in, so the rules are
//! tested without sleeping.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A position in the schedule: epoch and position within that epoch's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ItemId {
    /// Pass over the prompt set.
    pub epoch: u64,
    /// Position in the pass's shuffled order.
    pub position: u64,
}

impl fmt::Display for ItemId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.epoch, self.position)
    }
}

impl FromStr for ItemId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (epoch, position) = text
            .split_once(':')
            .ok_or_else(|| format!("item id {text:?} is not EPOCH:POSITION"))?;
        let parse = |part: &str| {
            part.parse::<u64>()
                .map_err(|_| format!("item id {text:?} is not EPOCH:POSITION"))
        };
        Ok(Self {
            epoch: parse(epoch)?,
            position: parse(position)?,
        })
    }
}

/// One prompt to answer: its id and the index of the prompt in the prompt set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The item's id (the group's idempotency key).
    pub id: ItemId,
    /// Index into the prompt set.
    pub prompt_index: usize,
}

/// Items handed to one worker at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The lease's id.
    pub lease_id: String,
    /// The prompts to answer.
    pub items: Vec<Item>,
}

/// What [`PromptScheduler::answer`] decided about a submitted item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// First answer: accepted.
    Accepted(Item),
    /// Answered before.
    Duplicate,
    /// Never issued (or from another run).
    Unknown,
}

/// What a checkpoint stores about the schedule: where fresh items continue, the items to
/// hand out again (leased, queued or answered-but-not-yet-trained when it was written),
/// and the ids already trained on (so a late answer from before a restart is still a
/// duplicate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ScheduleSnapshot {
    /// The next fresh item.
    pub next: Option<ItemId>,
    /// Items to re-issue first.
    pub redo: Vec<Item>,
    /// Items whose answers were trained on.
    pub answered: Vec<ItemId>,
}

struct LeaseRecord {
    deadline: Instant,
    items: Vec<ItemId>,
}

/// The schedule of prompts over epochs, with leases.
pub struct PromptScheduler {
    num_prompts: usize,
    epochs: u64,
    seed: u64,
    lease_timeout: Duration,
    next: ItemId,
    order: Vec<usize>,
    requeued: VecDeque<Item>,
    /// Issued, not answered: item → lease holding it (None while queued for re-issue).
    outstanding: HashMap<ItemId, (Item, Option<u64>)>,
    leases: HashMap<u64, LeaseRecord>,
    answered: HashSet<ItemId>,
    lease_counter: u64,
}

impl fmt::Debug for PromptScheduler {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("PromptScheduler")
            .field("num_prompts", &self.num_prompts)
            .field("epochs", &self.epochs)
            .field("next", &self.next)
            .field("outstanding", &self.outstanding.len())
            .field("leases", &self.leases.len())
            .finish()
    }
}

impl PromptScheduler {
    /// A schedule of `epochs` passes over `num_prompts` prompts, each pass in its own
    /// seeded order; leases last `lease_timeout`.
    pub fn new(num_prompts: usize, epochs: u64, seed: u64, lease_timeout: Duration) -> Self {
        let mut scheduler = Self {
            num_prompts,
            epochs,
            seed,
            lease_timeout,
            next: ItemId {
                epoch: 0,
                position: 0,
            },
            order: Vec::new(),
            requeued: VecDeque::new(),
            outstanding: HashMap::new(),
            leases: HashMap::new(),
            answered: HashSet::new(),
            lease_counter: 0,
        };
        scheduler.order = scheduler.order_of(0);
        scheduler
    }

    /// Continues a schedule from a checkpoint's snapshot.
    pub fn restore(&mut self, snapshot: &ScheduleSnapshot) {
        self.next = snapshot.next.unwrap_or(ItemId {
            epoch: self.epochs,
            position: 0,
        });
        self.order = self.order_of(self.next.epoch);
        self.requeued.clear();
        self.outstanding.clear();
        self.leases.clear();
        for item in &snapshot.redo {
            self.outstanding.insert(item.id, (*item, None));
            self.requeued.push_back(*item);
        }
        self.answered = snapshot.answered.iter().copied().collect();
    }

    /// The snapshot to checkpoint. `untrained` are answered items whose groups have not
    /// been trained on yet: they are redone after a restart, like unanswered ones.
    pub fn snapshot(&self, untrained: &[Item]) -> ScheduleSnapshot {
        let mut redo: Vec<Item> = self
            .outstanding
            .values()
            .map(|(item, _)| *item)
            .chain(untrained.iter().copied())
            .collect();
        redo.sort_by_key(|item| item.id);
        let untrained_ids: HashSet<ItemId> = untrained.iter().map(|item| item.id).collect();
        let mut answered: Vec<ItemId> = self
            .answered
            .iter()
            .filter(|id| !untrained_ids.contains(id))
            .copied()
            .collect();
        answered.sort();
        ScheduleSnapshot {
            next: (!self.fresh_exhausted()).then_some(self.next),
            redo,
            answered,
        }
    }

    /// Hands out up to `max` items: expired leases' items first, then fresh ones. `None`
    /// when nothing can be handed out right now.
    pub fn lease(&mut self, max: usize, now: Instant) -> Option<Lease> {
        self.lease_with_fresh_limit(max, usize::MAX, now)
    }

    /// Like [`PromptScheduler::lease`], with at most `max_fresh` fresh items: items to
    /// re-issue always go out (they are in flight already), new ones only within the
    /// caller's window.
    pub fn lease_with_fresh_limit(
        &mut self,
        max: usize,
        max_fresh: usize,
        now: Instant,
    ) -> Option<Lease> {
        self.expire(now);
        let mut items = Vec::new();
        while items.len() < max {
            let Some(item) = self.requeued.pop_front() else {
                break;
            };
            // Answered (or re-leased) since it was queued: skip.
            if matches!(self.outstanding.get(&item.id), Some((_, None))) {
                items.push(item);
            }
        }
        let mut fresh = 0;
        while items.len() < max && fresh < max_fresh {
            let Some(item) = self.next_fresh() else { break };
            items.push(item);
            fresh += 1;
        }
        if items.is_empty() {
            return None;
        }
        self.lease_counter += 1;
        let lease_number = self.lease_counter;
        for item in &items {
            self.outstanding
                .insert(item.id, (*item, Some(lease_number)));
        }
        self.leases.insert(
            lease_number,
            LeaseRecord {
                deadline: now + self.lease_timeout,
                items: items.iter().map(|item| item.id).collect(),
            },
        );
        Some(Lease {
            lease_id: format!("lease-{lease_number}"),
            items,
        })
    }

    /// Records an answer for `id`.
    pub fn answer(&mut self, id: ItemId) -> Answer {
        if self.answered.contains(&id) {
            return Answer::Duplicate;
        }
        match self.outstanding.remove(&id) {
            Some((item, holder)) => {
                self.answered.insert(id);
                if let Some(number) = holder {
                    self.close_lease_if_done(number);
                }
                Answer::Accepted(item)
            }
            None => Answer::Unknown,
        }
    }

    /// Forgets a lease once none of its items is held by it any more, so its deadline no
    /// longer counts (see [`PromptScheduler::next_deadline`]).
    fn close_lease_if_done(&mut self, number: u64) {
        let Some(lease) = self.leases.get(&number) else {
            return;
        };
        let still_held = lease.items.iter().any(|id| {
            self.outstanding
                .get(id)
                .is_some_and(|(_, holder)| *holder == Some(number))
        });
        if !still_held {
            self.leases.remove(&number);
        }
    }

    /// Whether `id` was issued and is not answered yet.
    pub fn is_outstanding(&self, id: ItemId) -> bool {
        self.outstanding.contains_key(&id)
    }

    /// Whether `id` has an answer already.
    pub fn is_answered(&self, id: ItemId) -> bool {
        self.answered.contains(&id)
    }

    /// Puts an issued item back for re-issue at once (its answer was unusable, e.g. stale).
    /// An answered item is un-answered first.
    pub fn requeue(&mut self, item: Item) {
        self.answered.remove(&item.id);
        self.outstanding.insert(item.id, (item, None));
        self.requeued.push_back(item);
    }

    /// Items issued or queued and not answered.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// The epoch fresh items come from now (`epochs` once all are issued).
    pub fn epoch(&self) -> u64 {
        self.next.epoch
    }

    /// No fresh item is left: every epoch has been handed out.
    pub fn fresh_exhausted(&self) -> bool {
        self.next.epoch >= self.epochs || self.num_prompts == 0
    }

    /// Every item has been handed out and answered: nothing more will come.
    pub fn is_complete(&self) -> bool {
        self.fresh_exhausted() && self.outstanding.is_empty()
    }

    /// The earliest deadline of a lease that still holds unanswered items (to know when
    /// to look again).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.leases.values().map(|lease| lease.deadline).min()
    }

    fn expire(&mut self, now: Instant) {
        let mut expired: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(number, _)| *number)
            .collect();
        // Oldest lease first, so re-issue follows the original order.
        expired.sort();
        for number in expired {
            let Some(lease) = self.leases.remove(&number) else {
                continue;
            };
            for id in lease.items {
                if let Some((item, holder)) = self.outstanding.get_mut(&id)
                    && *holder == Some(number)
                {
                    *holder = None;
                    self.requeued.push_back(*item);
                }
            }
        }
    }

    fn next_fresh(&mut self) -> Option<Item> {
        if self.fresh_exhausted() {
            return None;
        }
        let item = Item {
            id: self.next,
            prompt_index: self.order[self.next.position as usize],
        };
        self.next.position += 1;
        if self.next.position as usize >= self.num_prompts {
            self.next = ItemId {
                epoch: self.next.epoch + 1,
                position: 0,
            };
            self.order = self.order_of(self.next.epoch);
        }
        Some(item)
    }

    fn order_of(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.num_prompts).collect();
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0xd1b5_4a32_d192_ed03));
        order.shuffle(&mut rng);
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler(prompts: usize, epochs: u64) -> PromptScheduler {
        PromptScheduler::new(prompts, epochs, 5, Duration::from_secs(10))
    }

    fn ids(lease: &Lease) -> Vec<ItemId> {
        lease.items.iter().map(|item| item.id).collect()
    }

    #[test]
    fn item_ids_round_trip() {
        let id = ItemId {
            epoch: 3,
            position: 17,
        };
        assert_eq!(id.to_string(), "3:17");
        assert_eq!("3:17".parse::<ItemId>().unwrap(), id);
        assert!("3-17".parse::<ItemId>().unwrap_err().contains("3-17"));
    }

    #[test]
    fn epochs_cover_every_prompt_in_a_seeded_order() {
        let mut schedule = scheduler(4, 2);
        let now = Instant::now();
        let mut per_epoch: Vec<Vec<usize>> = vec![Vec::new(), Vec::new()];
        while let Some(lease) = schedule.lease(3, now) {
            for item in &lease.items {
                per_epoch[item.id.epoch as usize].push(item.prompt_index);
                assert_eq!(schedule.answer(item.id), Answer::Accepted(*item));
            }
        }
        for epoch in &per_epoch {
            let mut sorted = epoch.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2, 3]);
        }
        assert_ne!(per_epoch[0], per_epoch[1], "each epoch has its own order");
        assert!(schedule.is_complete());
        // Same seed, same order.
        let mut again = scheduler(4, 2);
        let first: Vec<usize> = again
            .lease(4, now)
            .unwrap()
            .items
            .iter()
            .map(|i| i.prompt_index)
            .collect();
        assert_eq!(first, per_epoch[0]);
    }

    #[test]
    fn expired_lease_is_reissued_and_answered_once() {
        let mut schedule = scheduler(10, 1);
        let start = Instant::now();
        let first = schedule.lease(3, start).unwrap();
        // One of the three is answered in time.
        assert!(matches!(
            schedule.answer(first.items[0].id),
            Answer::Accepted(_)
        ));
        // Before the deadline nothing is re-issued: fresh items come next.
        let second = schedule.lease(2, start + Duration::from_secs(5)).unwrap();
        assert!(ids(&second).iter().all(|id| !ids(&first).contains(id)));
        // After it, the two unanswered items come back first, with their ids.
        let third = schedule.lease(3, start + Duration::from_secs(11)).unwrap();
        assert_eq!(ids(&third)[..2], ids(&first)[1..]);
        assert_ne!(third.lease_id, first.lease_id);
        // The slow first worker answers after all: accepted once, the re-issue's answer
        // is then a duplicate.
        assert!(matches!(
            schedule.answer(first.items[1].id),
            Answer::Accepted(_)
        ));
        assert_eq!(schedule.answer(third.items[0].id), Answer::Duplicate);
        assert_eq!(
            schedule.answer(ItemId {
                epoch: 9,
                position: 0
            }),
            Answer::Unknown
        );
        // Its second lease expired too, but answered items are not re-issued.
        assert!(schedule.next_deadline().is_some());
        let fourth = schedule.lease(10, start + Duration::from_secs(30)).unwrap();
        assert!(!ids(&fourth).contains(&first.items[1].id));
        assert!(!ids(&fourth).contains(&first.items[0].id));
    }

    #[test]
    fn requeued_items_come_back_and_snapshots_redo_unfinished_work() {
        let mut schedule = scheduler(5, 1);
        let now = Instant::now();
        let lease = schedule.lease(3, now).unwrap();
        let [a, b, c] = [lease.items[0], lease.items[1], lease.items[2]];
        assert!(matches!(schedule.answer(a.id), Answer::Accepted(_)));
        assert!(matches!(schedule.answer(b.id), Answer::Accepted(_)));
        // b's group turned out stale: it goes back.
        schedule.requeue(b);
        assert!(!schedule.is_answered(b.id));
        // Snapshot with a still untrained: redo a, b and the leased c; a is not "answered".
        let snapshot = schedule.snapshot(&[a]);
        let mut redo: Vec<ItemId> = snapshot.redo.iter().map(|item| item.id).collect();
        redo.sort();
        let mut expected = vec![a.id, b.id, c.id];
        expected.sort();
        assert_eq!(redo, expected);
        assert!(snapshot.answered.is_empty());

        let mut restored = scheduler(5, 1);
        restored.restore(&snapshot);
        let first = restored.lease(10, now).unwrap();
        let handed: Vec<ItemId> = ids(&first);
        assert_eq!(handed.len(), 5, "3 redone + 2 fresh");
        assert_eq!(
            &handed[..3],
            &snapshot.redo.iter().map(|i| i.id).collect::<Vec<_>>()[..]
        );
        assert_eq!(restored.lease(1, now), None);
        assert!(restored.next_deadline().is_some());
        for id in handed {
            assert!(matches!(restored.answer(id), Answer::Accepted(_)));
        }
        assert!(restored.is_complete());
        assert_eq!(restored.next_deadline(), None, "answered leases are closed");
    }
}
