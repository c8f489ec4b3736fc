//! The control thread: a small runtime of its own for background work (health probes, LSN
//! polling, catalog refresh, pool reaping) and for every timer the data path arms.
//!
//! The data-path runtime is built without a time driver: tokio's timer wheel is consulted on
//! every park, about a tenth of a proxied query's instructions, though a query arms no timer.
//! Timers live here instead and wake the data path through a channel when they fire.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinHandle};

/// The control runtime, started on first use and kept for the life of the process.
pub fn handle() -> &'static Handle {
    static CONTROL: OnceLock<Handle> = OnceLock::new();
    CONTROL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("pgcausal-control".into())
            .spawn(move || {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("control runtime");
                tx.send(runtime.handle().clone()).expect("control handle");
                runtime.block_on(std::future::pending::<()>());
            })
            .expect("control thread");
        rx.recv().expect("control runtime started")
    })
}

/// Runs a background task on the control thread.
pub fn spawn<F>(task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle().spawn(task)
}

/// Background tasks that end when this is dropped (the proxy that started them stopped).
#[derive(Default)]
pub struct Tasks(Vec<AbortHandle>);

impl Tasks {
    pub fn add<T>(&mut self, task: JoinHandle<T>) {
        self.0.push(task.abort_handle());
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.0.iter().for_each(AbortHandle::abort);
    }
}

/// A sleep armed on the control thread; usable from any runtime, with or without timers.
pub struct Sleep {
    fired: oneshot::Receiver<()>,
    timer: AbortHandle,
}

pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(Instant::now() + duration)
}

pub fn sleep_until(deadline: Instant) -> Sleep {
    let (tx, fired) = oneshot::channel();
    let timer = spawn(async move {
        tokio::time::sleep_until(deadline.into()).await;
        let _ = tx.send(());
    })
    .abort_handle();
    Sleep { fired, timer }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // An aborted timer (process shutting down) counts as fired rather than hanging the caller.
        Pin::new(&mut self.fired).poll(cx).map(|_| ())
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.timer.abort();
    }
}

/// The deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Runs `future` for at most `duration`.
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    timeout_at(Instant::now() + duration, future)
}

/// Runs `future` until `deadline`; the timer is armed only if the first poll does not finish it.
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    Timeout { future, deadline, timer: None }
}

pin_project_lite::pin_project! {
    /// The future of [`timeout`]: a struct, not an `async fn`, so the work is stored once (an
    /// async body would hold it as its argument and again pinned), and a client's login wait
    /// costs only what its work does.
    pub struct Timeout<F> {
        #[pin]
        future: F,
        deadline: Instant,
        timer: Option<Sleep>,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.future.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        let deadline = *this.deadline;
        let timer = this.timer.get_or_insert_with(|| sleep_until(deadline));
        Pin::new(timer).poll(cx).map(|()| Err(Elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data path's kind of runtime: no time driver.
    fn runtime_without_timers() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap()
    }

    #[test]
    fn timers_work_on_a_runtime_without_a_time_driver() {
        runtime_without_timers().block_on(async {
            let started = Instant::now();
            sleep(Duration::from_millis(30)).await;
            assert!(started.elapsed() >= Duration::from_millis(30));
            let pending = std::future::pending::<()>();
            assert_eq!(timeout(Duration::from_millis(20), pending).await, Err(Elapsed));
            assert_eq!(timeout(Duration::from_secs(60), async { 7 }).await, Ok(7));
        });
    }

    #[test]
    fn a_dropped_sleep_cancels_its_timer() {
        runtime_without_timers().block_on(async {
            let s = sleep(Duration::from_secs(3600));
            let timer = s.timer.clone();
            drop(s);
            // Aborting is asynchronous: wait for the control thread to see it.
            while !timer.is_finished() {
                sleep(Duration::from_millis(1)).await;
            }
        });
    }

    #[test]
    fn background_tasks_stop_with_their_owner() {
        runtime_without_timers().block_on(async {
            let mut tasks = Tasks::default();
            let task = spawn(std::future::pending::<()>());
            let handle = task.abort_handle();
            tasks.add(task);
            drop(tasks);
            while !handle.is_finished() {
                sleep(Duration::from_millis(1)).await;
            }
        });
    }
}
