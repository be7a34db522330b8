//! Work spread over every core with results in input order, for CPU-bound passes over many
//! independent pieces (reading result folders, per-system statistics). The order does not
//! depend on timing, so output built from it is the same as a one-thread pass.

use std::sync::atomic::{AtomicUsize, Ordering};

/// `f` over every item, on up to `available_parallelism` threads, the results in the items'
/// order. A worker's panic is passed on: no result is dropped in silence.
pub fn map_in_order<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let at = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(at) else {
                            return done;
                        };
                        done.push((at, f(item)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    done.sort_by_key(|(at, _)| *at);
    done.into_iter().map(|(_, result)| result).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_input_order_whatever_finishes_first() {
        let items: Vec<u64> = (0..200).collect();
        // Early items take longest, so with two or more threads they finish last.
        let results = map_in_order(&items, |&i| {
            std::thread::sleep(std::time::Duration::from_micros(200u64.saturating_sub(i) * 5));
            i * 2
        });
        assert_eq!(results, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert!(map_in_order(&[] as &[u8], |_| 0u8).is_empty());
    }

    #[test]
    fn a_panicking_item_panics_the_caller() {
        let items = [1, 2, 3, 4];
        let outcome = std::panic::catch_unwind(|| map_in_order(&items, |&i| if i == 3 { panic!("item 3") } else { i }));
        assert!(outcome.is_err());
    }
}
