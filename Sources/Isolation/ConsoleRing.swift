/// Bounded console history: the newest `capacity` bytes.
public struct ConsoleRing: Sendable {
    public let capacity: Int
    var storage: [UInt8] = []
    var start = 0

    public init(capacity: Int) { self.capacity = capacity }

    public mutating func append(_ bytes: ArraySlice<UInt8>) {
        for byte in bytes.suffix(capacity) {
            if storage.count < capacity {
                storage.append(byte)
            } else {
                storage[start] = byte
                start = (start + 1) % capacity
            }
        }
    }

    public func contents() -> [UInt8] { Array(storage[start...] + storage[..<start]) }
}
