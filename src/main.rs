fn main() {
    println!("spotd: work in progress");
}
