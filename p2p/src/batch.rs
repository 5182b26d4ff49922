//! Group commit's first step, shared by the directory and the nodes: take the job that
//! woke the writer and whatever else is already waiting, so that one commit serves
//! them all.

use std::sync::mpsc::Receiver;

/// `first` and the items waiting behind it in `queue`, up to `max` in all; never
/// waits for more.
pub fn gather<T>(first: T, queue: &Receiver<T>, max: usize) -> Vec<T> {
    let mut group = vec![first];
    while group.len() < max {
        match queue.try_recv() {
            Ok(next) => group.push(next),
            Err(_) => break,
        }
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_what_waits_up_to_the_limit() {
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 1..=5 {
            tx.send(i).unwrap();
        }
        assert_eq!(gather(0, &rx, 3), [0, 1, 2]);
        assert_eq!(gather(9, &rx, 10), [9, 3, 4, 5]);
        assert_eq!(gather(7, &rx, 10), [7]);
    }
}
