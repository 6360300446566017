import NIOCore

/// Runs the jobs of tasks that prefer it on one NIO event loop, so a call's handler, its answer
/// and its connection's I/O stay on one thread instead of hopping to the cooperative pool and back.
public final class EventLoopTaskExecutor: TaskExecutor {
    public let eventLoop: EventLoop

    public init(eventLoop: EventLoop) { self.eventLoop = eventLoop }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
