fn main() { println!("harness"); }
